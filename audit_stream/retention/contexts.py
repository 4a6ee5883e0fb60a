"""Contexts that nothing references any more: garbage once an hour old."""

from __future__ import annotations

from datetime import timedelta

from django.db import transaction

from audit_stream.retention import batches
from audit_stream.retention.policies import row_log_model

__all__ = ["prune_contexts"]

_GRACE = timedelta(hours=1)

# Contexts that no event and no change points to any more (and old enough not
# to belong to a request still under way). {not_in_events} adds one NOT EXISTS
# per event table that has a context column.
_CONTEXT_CANDIDATES = """
SELECT ctx.id FROM audit_stream_context AS ctx
WHERE ctx.updated_at < %(grace)s
  AND NOT EXISTS (SELECT 1 FROM audit_stream_change AS c WHERE c.context_id = ctx.id)
  {not_in_events}
"""


def prune_contexts(connection, now, batch_size, dry_run) -> int:
    """Delete (or, in a dry run, count) the unreferenced contexts older than the grace period."""
    from audit_stream import tracking

    quote = connection.ops.quote_name
    tables = [table for table, model in sorted(tracking._event_models.items()) if model._pgh_has_context]
    params = {"grace": now - _GRACE}
    with connection.cursor() as cursor:
        # Each table's distinct context ids, hashed once: far fewer than its events
        # (a hash of every event's context id cost most of a dry run at 1M events).
        # An empty table is left out (each one cost a pass of every candidate): an
        # event it gets meanwhile attaches a context that is new or refreshed, which
        # the DELETE's own updated_at test keeps.
        not_in_events = "".join(
            f" AND NOT EXISTS (SELECT 1 FROM (SELECT DISTINCT pgh_context_id FROM {quote(table)}) AS e"
            " WHERE e.pgh_context_id = ctx.id)"
            for table in [*tables, row_log_model()._meta.db_table]
            if _has_rows(cursor, quote(table))
        )
        candidates = _CONTEXT_CANDIDATES.format(not_in_events=not_in_events)
        if dry_run:
            with transaction.atomic(using=connection.alias):
                batches.choosing_settings(cursor)
                cursor.execute(f"SELECT count(*) FROM ({candidates}) AS candidates", params)
                return cursor.fetchone()[0]
        # updated_at again in the DELETE itself: rechecked on the row's latest version if a
        # writer attached the context meanwhile (see triggers.ATTACH_CONTEXT_FUNCTION).
        cursor.execute(
            f"DELETE FROM audit_stream_context WHERE id IN ({candidates}) AND updated_at < %(grace)s", params
        )
        return cursor.rowcount


def _has_rows(cursor, table: str) -> bool:
    cursor.execute(f"SELECT EXISTS (SELECT 1 FROM {table})")
    return cursor.fetchone()[0]
