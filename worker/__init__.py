"""The deployable processes: ``celery -A worker worker|beat`` and ``python -m worker.listen``."""

from worker.celery import app

__all__ = ["app"]
