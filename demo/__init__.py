"""A small shop whose history is recorded by audit_stream (``make demo``)."""
