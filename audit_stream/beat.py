"""The periodic tasks audit_stream needs, added to your project's own Celery app.

In the module that creates your Celery app (``mysite/celery.py``)::

    app.autodiscover_tasks()          # finds audit_stream.tasks, as any installed app's
    audit_stream.beat.schedule(app)   # the sweep, retention and partitions ahead

``celery -A mysite beat`` then runs them. The listener
(``manage.py audit_stream listen``) does the sweep's work every
``POLL_INTERVAL``; the sweep is the safety net for when no listener runs.
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["PARTITIONS_INTERVAL", "SWEEP_INTERVAL", "schedule"]

#: Seconds between two sweeps (``audit_stream.sweep``: fold what is pending, deliver what is due);
#: the environment variable ``AUDIT_STREAM_SWEEP_SECONDS`` overrides it.
SWEEP_INTERVAL = 30.0

#: Seconds between two runs of ``audit_stream.ensure_partitions`` (partitions created ahead).
PARTITIONS_INTERVAL = 300.0


def schedule(app: Any) -> None:
    """Add audit_stream's periodic tasks to ``app``'s beat schedule.

    They are ``audit_stream.sweep``, ``audit_stream.prune`` and
    ``audit_stream.ensure_partitions``.

    Entries are added when the app is finalized, after its configuration
    (``CELERY_*`` settings included) is read, so an entry of the same name in
    ``CELERY_BEAT_SCHEDULE`` is replaced, never duplicated.
    """

    def _add(sender: Any = app, **kwargs: Any) -> None:
        from audit_stream import config

        sender.add_periodic_task(
            float(os.environ.get("AUDIT_STREAM_SWEEP_SECONDS", SWEEP_INTERVAL)),
            sender.signature("audit_stream.sweep"),
            name="audit_stream.sweep",
        )
        sender.add_periodic_task(
            config.retention_interval(), sender.signature("audit_stream.prune"), name="audit_stream.prune"
        )
        # Partitioned history: partitions created ahead, so a write never lands in the default one.
        sender.add_periodic_task(
            PARTITIONS_INTERVAL,
            sender.signature("audit_stream.ensure_partitions"),
            name="audit_stream.ensure_partitions",
        )

    if app.finalized:
        _add(app)
    else:
        app.on_after_finalize.connect(_add, weak=False)
