"""The demo's Celery app: ``celery -A worker worker`` and ``celery -A worker beat``.

A project of its own does the same in its own Celery app (README, Installation):
this package is the demo's and docker-compose's deployable, not part of the
installed distribution.

Configured from Django settings (``CELERY_`` namespace); the broker defaults to
``$REDIS_URL``. Tasks are acknowledged late and rejected when the worker is
lost, so a killed worker's fold runs again; one task at a time per process.
"""

import logging
import os

from celery import Celery

import audit_stream.beat

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "demo.settings")

# httpx logs every request's full URL at INFO; a webhook URL's query string may
# carry a token, and -l info would put it in the logs. Attempts are recorded in
# the database instead.
logging.getLogger("httpx").setLevel(logging.WARNING)

app = Celery("worker")
app.conf.update(
    broker_url=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_ignore_result=True,
    broker_connection_retry_on_startup=True,
    # Redis redelivers unacknowledged tasks after this long (a killed worker's fold).
    broker_transport_options={"visibility_timeout": 300},
)
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
# The sweep (a safety net for when no listener runs) and retention.
audit_stream.beat.schedule(app)
