"""Celery tasks (autodiscovered by ``worker.celery``)."""

from __future__ import annotations

import logging

from celery import shared_task

from audit_stream.stream import fold as _fold
from audit_stream.stream import pending, wakeup

logger = logging.getLogger("audit_stream.stream")


@shared_task(name="audit_stream.fold", acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def fold(event_table: str) -> dict:
    """Fold the committed events of one event table into the change feed.

    Acknowledged only when done: a worker killed mid-fold leaves the task to
    be delivered again, and the fold's transactions make the redo exact.
    """
    pending.release(event_table)
    result = _fold.fold(event_table)
    if not result.caught_up and pending.claim(event_table):
        fold.delay(event_table)  # more to do: yield the worker, come back
    logger.info("folded %s events of %s", result.folded, event_table)
    return {"event_table": event_table, "folded": result.folded, "caught_up": result.caught_up}


@shared_task(name="audit_stream.sweep", ignore_result=True)
def sweep() -> list[str]:
    """Enqueue a fold for every table with unfolded events (beat's safety net if no listener runs)."""
    tables = wakeup.tables_with_work()
    for table in tables:
        if pending.claim(table):
            fold.delay(table)
    return tables
