"""Backfill: one ``backfill`` event for every row that has no history yet.

Rows that existed before their model was tracked (or their table logged) have
no event, so ``as_of`` cannot see them and revert has nothing to go back to.
:func:`backfill` records each such row's current state, once, set-based
(``INSERT ... SELECT``), in batches of short transactions, inside one context
``{"command": "backfill_history"}``.

Safe while the application writes. Each batch runs two statements in one
transaction:

1. ``SELECT ... FOR SHARE`` the next rows in primary-key order. It waits for
   every transaction that is changing one of them, and then keeps writers off
   them until the batch commits.
2. ``INSERT ... SELECT`` an event for each row of that key range that has none
   (a new statement: in READ COMMITTED it sees what the writers of step 1
   committed, their events included).

So a row changed concurrently either has a visible event by step 2 (and is
skipped), or is changed after the batch commits (and its event comes after
the backfill event): no backfill event is ordered after a real change of the
same row. A row inserted concurrently has its own insert event. A model with
tracked many-to-many fields locks its rows ``FOR UPDATE`` (an insert into the
through table checks its foreign key with ``FOR KEY SHARE``) and the through
rows ``FOR SHARE`` (against removes), then records each object's set. Idempotent
(rows with an event are skipped) and resumable (a killed run loses at most its
open batch; running again completes the rest).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass

from django.db import DEFAULT_DB_ALIAS, OperationalError, connections, models, transaction

from audit_stream import config
from audit_stream.history.states import BACKFILL_LABEL, source_for
from audit_stream.triggers import quote_name

__all__ = ["BACKFILL_CONTEXT", "BackfillPlan", "backfill", "plan"]

#: The context metadata of backfill events.
BACKFILL_CONTEXT = {"command": "backfill_history"}

# Step 1 of a batch: lock the next rows, in key order, waiting for their writers.
_LOCK_SQL = "SELECT t.{pk} FROM {table} AS t {after} ORDER BY t.{pk} LIMIT %s FOR {mode} OF t"

# Step 2 for an event table: the rows of the locked key range that have no event.
_EVENTS_SQL = """
INSERT INTO {event_table} (pgh_label, pgh_obj_id, pgh_context_id{event_columns})
SELECT %s, t.{pk}, %s{row_columns}
FROM {table} AS t
WHERE {in_range}
  AND NOT EXISTS (SELECT FROM {event_table} AS e WHERE e.pgh_obj_id = t.{pk})
"""

# Step 1 for a tracked many-to-many field: its through rows of the locked range,
# against a concurrent remove() (a delete locks its rows).
_M2M_LOCK_SQL = """
SELECT FROM {through} AS r JOIN {table} AS t ON t.{pk} = r.{source}
WHERE {in_range} FOR SHARE OF r
"""

# Step 2 for a tracked many-to-many field: each object's set, if it has no event yet.
_M2M_SQL = """
INSERT INTO {event_table} (pgh_label, pgh_obj_id, pgh_context_id, {column})
SELECT %s, t.{pk}, %s, ARRAY(SELECT r.{target} FROM {through} AS r WHERE r.{source} = t.{pk} ORDER BY 1)
FROM {table} AS t
WHERE {in_range}
  AND NOT EXISTS (SELECT FROM {event_table} AS e WHERE e.pgh_obj_id = t.{pk})
"""

# Step 2 for a table logged by initlogging: the whole row, as an insert carries it.
_ROW_LOG_SQL = """
INSERT INTO audit_stream_row_log (pgh_label, pgh_xid, logged_table, pgh_obj_id, pgh_context_id, new_data)
SELECT %s, pg_current_xact_id()::text::bigint, %s, t.{pk}::text, %s, to_jsonb(t)
FROM {table} AS t
WHERE {in_range}
  AND NOT EXISTS (SELECT FROM audit_stream_row_log AS l
                  WHERE l.logged_table = ANY (%s::text[]) AND l.pgh_obj_id = t.{pk}::text)
"""

# How many rows have no history yet (dry runs and the progress bar's total).
_MISSING_EVENTS_SQL = """
SELECT count(*) FROM {table} AS t
WHERE NOT EXISTS (SELECT FROM {event_table} AS e WHERE e.pgh_obj_id = t.{pk})
"""
_MISSING_ROW_LOG_SQL = """
SELECT count(*) FROM {table} AS t
WHERE NOT EXISTS (SELECT FROM audit_stream_row_log AS l
                  WHERE l.logged_table = ANY (%s::text[]) AND l.pgh_obj_id = t.{pk}::text)
"""


@dataclass
class BackfillPlan:
    """What a backfill of one model writes into."""

    model: type[models.Model]
    event_model: type[models.Model] | None  # None: the row log
    rows: int  # rows in the table
    missing: int  # rows without any event

    @property
    def target(self) -> str:
        return self.event_model._meta.label if self.event_model else "the row log (initlogging)"


def _names(model: type[models.Model], using: str) -> tuple[str, str, list[str]]:
    from audit_stream import rowlog

    meta = model._meta.concrete_model._meta
    return quote_name(meta.db_table), quote_name(meta.pk.column), rowlog.table_names(model, using=using)


def plan(model: type[models.Model], *, using: str = DEFAULT_DB_ALIAS) -> BackfillPlan:
    """Where ``model``'s backfill goes and how many rows it concerns (changes nothing).

    Raises:
        ValueError: If ``model``'s history cannot hold whole states (see
            :func:`audit_stream.history.states.source_for`).
    """
    source = source_for(model, using=using)
    table, pk, names = _names(model, using)
    with connections[using].cursor() as cursor:
        cursor.execute(f"SELECT count(*) FROM {table}")
        rows = cursor.fetchone()[0]
        if source.event_model is not None:
            event_table = quote_name(source.event_model._meta.db_table)
            cursor.execute(_MISSING_EVENTS_SQL.format(table=table, pk=pk, event_table=event_table))
        else:
            cursor.execute(_MISSING_ROW_LOG_SQL.format(table=table, pk=pk), [names])
        missing = cursor.fetchone()[0]
    return BackfillPlan(model, source.event_model, rows, missing)


def _insert_sql(event_model, model, table: str, pk: str, in_range: str) -> str:
    if event_model is None:
        return _ROW_LOG_SQL.format(table=table, pk=pk, in_range=in_range)
    tracked = {f.attname: f.column for f in model._meta.concrete_model._meta.concrete_fields}
    pairs = [
        (f.column, tracked[f.attname])
        for f in event_model._meta.concrete_fields
        if f.attname in event_model._pgh_tracked_fields
    ]
    return _EVENTS_SQL.format(
        event_table=quote_name(event_model._meta.db_table),
        event_columns="".join(f", {quote_name(c)}" for c, _ in pairs),
        row_columns="".join(f", t.{quote_name(c)}" for _, c in pairs),
        table=table,
        pk=pk,
        in_range=in_range,
    )


def _m2m_sql(m2m_event_model, model, table: str, pk: str, in_range: str) -> tuple[str, str]:
    """(lock the through rows, insert the sets) for one many-to-many field tracked with m2m_fields."""
    field = model._meta.get_field(m2m_event_model._pgh_m2m_field)
    through = quote_name(field.remote_field.through._meta.db_table)
    source, target = quote_name(field.m2m_column_name()), quote_name(field.m2m_reverse_name())
    lock = _M2M_LOCK_SQL.format(through=through, source=source, table=table, pk=pk, in_range=in_range)
    insert = _M2M_SQL.format(
        event_table=quote_name(m2m_event_model._meta.db_table),
        column=quote_name(m2m_event_model._meta.get_field(field.name).column),
        through=through,
        source=source,
        target=target,
        table=table,
        pk=pk,
        in_range=in_range,
    )
    return lock, insert


def backfill(
    model: type[models.Model],
    *,
    batch_size: int = 10_000,
    using: str = DEFAULT_DB_ALIAS,
    progress: Callable[[int, int], None] | None = None,
    retries: int = 5,
) -> int:
    """Write a ``backfill`` event for every row of ``model`` that has none; return how many.

    Many-to-many fields tracked with ``m2m_fields`` get a ``backfill`` event with
    their current set, for each object that has no event of that field.

    Args:
        model: A tracked model (whose event model records whole states) or a
            model whose table ``initlogging`` logs.
        batch_size: Rows per transaction.
        using: The database alias.
        progress: Called after each batch with (rows scanned, events written).
        retries: How many times a batch that hit a deadlock with a writer is retried.

    Raises:
        ValueError: If ``model``'s history cannot hold whole states.
    """
    from audit_stream import tracking

    if batch_size < 1:
        raise ValueError("batch_size must be at least 1.")
    source = source_for(model, using=using)
    event_model = source.event_model
    table, pk, names = _names(model, using)
    m2m_models = [m for m in tracking.event_models_for(model) if getattr(m, "_pgh_m2m_field", None)]
    context_id = str(uuid.uuid4())
    metadata = _metadata()
    # A tracked m2m field: FOR UPDATE on the rows also holds off inserts into
    # the through table (their foreign-key check takes FOR KEY SHARE on the row).
    mode = "UPDATE" if m2m_models else "SHARE"
    ranges = {True: f"t.{pk} <= %s", False: f"t.{pk} > %s AND t.{pk} <= %s"}  # first batch?
    lock = {
        True: _LOCK_SQL.format(table=table, pk=pk, after="", mode=mode),
        False: _LOCK_SQL.format(table=table, pk=pk, after=f"WHERE t.{pk} > %s", mode=mode),
    }
    insert = {k: _insert_sql(event_model, model, table, pk, r) for k, r in ranges.items()}
    m2m = {k: [_m2m_sql(m, model, table, pk, r) for m in m2m_models] for k, r in ranges.items()}
    connection = connections[using]
    written, last = 0, None
    while True:
        first = last is None
        for attempt in range(retries + 1):
            try:
                with transaction.atomic(using=using), connection.cursor() as cursor:
                    cursor.execute(lock[first], [batch_size] if first else [last, batch_size])
                    keys = [row[0] for row in cursor.fetchall()]
                    if not keys:
                        break
                    bounds = [keys[-1]] if first else [last, keys[-1]]
                    for m2m_lock, _ in m2m[first]:  # and the through rows, against removes
                        cursor.execute(m2m_lock, bounds)
                    cursor.execute("SELECT _audit_stream_attach_context(%s, %s)", [context_id, metadata])
                    if event_model is None:
                        params = [BACKFILL_LABEL, names[0], context_id, *bounds, names]
                    else:
                        params = [BACKFILL_LABEL, context_id, *bounds]
                    cursor.execute(insert[first], params)
                    inserted = cursor.rowcount
                    for _, m2m_insert in m2m[first]:
                        cursor.execute(m2m_insert, [BACKFILL_LABEL, context_id, *bounds])
                        inserted += cursor.rowcount
                break
            except OperationalError as exc:  # a deadlock with a writer: the batch rolled back
                if attempt == retries or "deadlock" not in str(exc):
                    raise
        if not keys:
            break
        written += inserted
        last = keys[-1]
        if progress is not None:
            progress(len(keys), inserted)
    if written:
        with connection.cursor() as cursor:  # wake the stream worker (it also polls)
            cursor.execute(
                "SELECT pg_notify(%s, %s)",
                [config.channel(), event_model._meta.db_table if event_model else "audit_stream_row_log"],
            )
    return written


def _metadata() -> str:
    """The backfill context's metadata, as the triggers receive context metadata."""
    from audit_stream.context import _serialize

    return _serialize(BACKFILL_CONTEXT)
