"""The models the write benchmark measures: one identical table per variant."""
