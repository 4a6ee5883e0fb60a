"""Retention of webhook messages, their attempts and sink messages: settled and old enough."""

from __future__ import annotations

from django.db import transaction

from audit_stream.retention import batches

__all__ = ["prune_attempts", "prune_messages", "prune_sink_messages"]

# A webhook or sink message that is settled (delivered, or dead: replay makes
# it owed again) and older than the cutoff. Messages still owed (pending,
# sending) are never pruned.
_SETTLED_BEFORE_CUTOFF = "status IN ('delivered', 'dead') AND created_at < %(cutoff)s"

_MESSAGE_CANDIDATES = f"""
INSERT INTO {batches.DOOMED_UUID} (id)
SELECT id FROM audit_stream_webhookmessage
WHERE {_SETTLED_BEFORE_CUTOFF}
"""

_SINK_MESSAGE_CANDIDATES = f"""
INSERT INTO {batches.DOOMED_UUID} (id)
SELECT id FROM audit_stream_sinkmessage
WHERE {_SETTLED_BEFORE_CUTOFF}
"""

_ATTEMPT_CANDIDATES = f"""
INSERT INTO {batches.DOOMED} (id)
SELECT id FROM audit_stream_webhookattempt WHERE attempted_at < %(cutoff)s
"""

# A batch of messages goes with its attempts.
_DELETE_MESSAGE_BATCH = f"""
WITH batch AS (
    DELETE FROM {batches.DOOMED_UUID}
    WHERE id IN (SELECT id FROM {batches.DOOMED_UUID} ORDER BY id LIMIT %(batch)s)
    RETURNING id
), attempts AS (
    DELETE FROM audit_stream_webhookattempt AS a USING batch WHERE a.message_id = batch.id
)
DELETE FROM audit_stream_webhookmessage AS m USING batch WHERE m.id = batch.id
"""


def prune_messages(connection, cutoff, batch_size, dry_run, progress) -> tuple[str, int]:
    """Settled webhook messages older than ``cutoff``, with their attempts."""
    table = "audit_stream_webhookmessage"
    if cutoff is None:
        return table, 0
    with connection.cursor() as cursor:
        total = batches.fill(cursor, _MESSAGE_CANDIDATES, {"cutoff": cutoff}, count_only=dry_run)
    if dry_run:
        return table, total
    done = 0
    while done < total:
        with transaction.atomic(using=connection.alias), connection.cursor() as cursor:
            cursor.execute(_DELETE_MESSAGE_BATCH, {"batch": batch_size})
            deleted = cursor.rowcount
        if deleted == 0:
            break
        done += deleted
        if progress:
            progress(table, done, total)
    return table, done


def prune_sink_messages(connection, cutoff, batch_size, dry_run, progress) -> tuple[str, int]:
    """Settled sink messages older than ``cutoff``."""
    return _prune(
        connection, "audit_stream_sinkmessage", _SINK_MESSAGE_CANDIDATES, cutoff, batch_size, dry_run,
        progress, batches.DOOMED_UUID,
    )  # fmt: skip


def prune_attempts(connection, cutoff, batch_size, dry_run, progress) -> tuple[str, int]:
    """Webhook attempts older than ``cutoff``."""
    return _prune(
        connection, "audit_stream_webhookattempt", _ATTEMPT_CANDIDATES, cutoff, batch_size, dry_run, progress,
        batches.DOOMED,
    )  # fmt: skip


def _prune(connection, table, candidates, cutoff, batch_size, dry_run, progress, doomed) -> tuple[str, int]:
    with connection.cursor() as cursor:
        total = batches.fill(cursor, candidates, {"cutoff": cutoff}, count_only=dry_run)
    if dry_run:
        return table, total
    return table, batches.drain(
        connection, table, "id", total, batch_size, progress, event_table=False, doomed=doomed
    )
