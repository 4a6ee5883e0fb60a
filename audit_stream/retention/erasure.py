"""Right to erasure: every trace of one object removed in one transaction, and that it happened recorded."""

from __future__ import annotations

from django.db import DEFAULT_DB_ALIAS, connections, transaction
from django.utils import timezone

from audit_stream import partitions
from audit_stream.retention import counts, references
from audit_stream.retention.changes import CHANGE_PARTITIONS_LOCK
from audit_stream.retention.permission import allow_prune, may_delete, privilege_error
from audit_stream.stream import checkpoint

__all__ = ["erase"]

# The webhook messages (and their attempts) that carry an object's changes.
_ERASE_MESSAGES = """
WITH changes AS (
    SELECT id FROM audit_stream_change WHERE model = %(model)s AND object_id = %(pk)s
), messages AS (
    SELECT m.id FROM audit_stream_webhookmessage AS m JOIN changes ON m.change_id = changes.id
), attempts AS (
    DELETE FROM audit_stream_webhookattempt AS a USING messages WHERE a.message_id = messages.id
)
DELETE FROM audit_stream_webhookmessage AS m USING messages WHERE m.id = messages.id
"""

# The sink messages that carry an object's changes.
_ERASE_SINK_MESSAGES = """
DELETE FROM audit_stream_sinkmessage AS m USING audit_stream_change AS c
WHERE m.change_id = c.id AND c.model = %(model)s AND c.object_id = %(pk)s
"""


def erase(
    model_label: str, pk: str, *, using: str = DEFAULT_DB_ALIAS, dry_run: bool = False
) -> dict[str, int]:
    """Remove every trace of one object: its events, changes, webhook and sink messages.

    For a right-to-erasure request. Unfolded events are erased too. What was
    erased is not recorded; that an erasure happened is (a ``RetentionRun``
    with ``trigger="erasure"`` and the counts). With ``dry_run`` the same
    deletes run and are rolled back: the counts are exact, nothing changes.
    """
    from django.apps import apps

    from audit_stream import keys, registry, rowlog
    from audit_stream.models import RetentionRun, RowLog

    try:
        tracked = apps.get_model(model_label)
    except (LookupError, ValueError):
        raise ValueError(f"{model_label!r} is not a model; write it as app_label.ModelName.") from None
    event_models = registry.event_models_for(tracked)
    logged_as = rowlog.table_names(tracked, using=using)
    if not event_models and not RowLog.objects.using(using).filter(logged_table__in=logged_as).exists():
        raise ValueError(
            f"{tracked._meta.label} is neither tracked nor in the row log: there is nothing to erase."
        )
    for table in [m._meta.db_table for m in event_models] + [RowLog._meta.db_table]:
        if not may_delete(table, using):
            raise PermissionError(f"Cannot erase: {privilege_error(table)}")
    if keys.is_composite(tracked):  # pk: the object id, {"column": value, ...}
        try:
            pk_value = keys.object_id(tracked, keys.parse(tracked, pk))
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(
                f"{pk!r} is not an object id of {tracked._meta.label}: write it as in the change feed,"
                f" a JSON object of every key column ({', '.join(keys.columns(tracked))})."
            ) from exc
    else:
        pk_value = tracked._meta.pk.to_python(pk)
    counted: dict[str, int] = {}
    connection = connections[using]
    quote = connection.ops.quote_name
    started = timezone.now()
    with transaction.atomic(using=using), allow_prune(using), connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [CHANGE_PARTITIONS_LOCK])
        cursor.execute(_ERASE_MESSAGES, {"model": tracked._meta.label_lower, "pk": str(pk_value)})
        counted["audit_stream_webhookmessage"] = cursor.rowcount
        cursor.execute(_ERASE_SINK_MESSAGES, {"model": tracked._meta.label_lower, "pk": str(pk_value)})
        counted["audit_stream_sinkmessage"] = cursor.rowcount
        cursor.execute(
            "DELETE FROM audit_stream_change WHERE model = %s AND object_id = %s",
            [tracked._meta.label_lower, str(pk_value)],
        )
        counted["audit_stream_change"] = cursor.rowcount
        for model in event_models:
            if not model._pgh_has_obj:
                continue
            table = model._meta.db_table
            counted[table] = _erase_events(
                cursor, table, quote(table), "e.pgh_obj_id = %(pk)s", {"pk": pk_value}, model._pgh_has_context
            )
        counted[RowLog._meta.db_table] = _erase_events(
            cursor, RowLog._meta.db_table, RowLog._meta.db_table,
            "e.logged_table = ANY(%(logged_as)s) AND e.pgh_obj_id = %(pk)s",
            {"logged_as": logged_as, "pk": str(pk_value)}, True,
        )  # fmt: skip
        # Its per-object counts go too (the row log's are shared by every logged table
        # with that key: they stay, an error upwards).
        tables = [m._meta.db_table for m in event_models if m._pgh_has_obj]
        cursor.execute(counts.ERASE_COUNTS, {"tables": tables, "pk": str(pk_value)})
        RetentionRun.objects.using(using).create(
            trigger="erasure",
            rows={tracked._meta.label: counted},
            finished_at=timezone.now(),
            started_at=started,
        )
        if dry_run:
            transaction.set_rollback(True, using=using)
    return counted


# An object's events, deleted; those the fold counted leave their contexts'
# counts (references.SUBTRACT: an unfolded one was never counted) and, in a
# partitioned table, their partitions' counts (references.subtractions), each
# {subtract} after a comma.
_ERASE_EVENTS = """
WITH gone AS (
    DELETE FROM {table} AS e WHERE {where} RETURNING {returning}
){subtract}
SELECT count(*) FROM gone
"""


def _erase_events(cursor, table: str, quoted: str, where: str, params: dict, has_context: bool) -> int:
    """Delete the events of ``table`` that ``where`` selects (read as ``e``); how many went."""
    subtract, columns = references.subtractions(
        "e", has_context=has_context, partitioned=partitions.is_partitioned(cursor, table)
    )
    if not subtract:
        cursor.execute(f"DELETE FROM {quoted} AS e WHERE {where}", params)
        return cursor.rowcount
    done, floor, foreign = checkpoint.folded(cursor, table)
    sql = _ERASE_EVENTS.format(
        table=quoted,
        where=where,
        returning=", ".join(["e.pgh_id", *columns]),
        subtract="".join(",\n" + cte.replace("{gone}", "gone") for cte in subtract),
    )
    cursor.execute(sql, {**params, "done": None if foreign else done, "floor": floor})
    return cursor.fetchone()[0]
