"""Benchmarks of audit_stream against no tracking and django-pghistory (see BENCHMARKS.md)."""
