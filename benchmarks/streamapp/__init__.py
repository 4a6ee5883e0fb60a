"""The stream benchmark's models (see benchmarks/stream.py)."""
