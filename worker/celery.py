"""The Celery app: ``celery -A worker worker`` and ``celery -A worker beat``.

Configured from Django settings (``CELERY_`` namespace); the broker defaults to
``$REDIS_URL``. Tasks are acknowledged late and rejected when the worker is
lost, so a killed worker's fold runs again; one task at a time per process.
"""

import logging
import os

from celery import Celery

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
    beat_schedule={
        # A safety net for when no listener runs: fold whatever is pending.
        "audit_stream.sweep": {"task": "audit_stream.sweep", "schedule": 30.0},
        # Partitioned history: partitions created ahead, so a write never lands in the default one.
        "audit_stream.ensure_partitions": {"task": "audit_stream.ensure_partitions", "schedule": 300.0},
    },
)
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(["audit_stream"])


@app.on_after_finalize.connect
def _schedule_retention(sender, **kwargs):
    """Prune by the retention policies every AUDIT_STREAM["RETENTION_INTERVAL"] seconds."""
    from audit_stream import config

    sender.add_periodic_task(
        config.retention_interval(), sender.signature("audit_stream.prune"), name="audit_stream.prune"
    )
