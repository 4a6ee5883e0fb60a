"""Placeholder replaced in the context issue."""
