"""The fold's batch query: one window of an interval's events becomes ``Change`` rows.

One ``INSERT ... SELECT`` per batch (:func:`sql` builds it): it reads the
events of the window (:data:`IN_BATCH`), diffs each against its object's
previous state and writes the ``Change`` rows, returning their ids for the
messages owed to webhook endpoints and sinks. The fold
(:mod:`audit_stream.stream.fold`) runs it inside the transaction that moves
its checkpoint; a re-lane (:mod:`audit_stream.stream.relane`) and a recovery
(:mod:`audit_stream.stream.recovery`) run it with their own intervals.
"""

from __future__ import annotations

import json

from audit_stream import events, masking, rowlog
from audit_stream.stream import lanes, unfolded

__all__ = ["IN_BATCH", "PGH_COLUMNS", "sql"]

#: Columns of an event row that are not the tracked object's state.
PGH_COLUMNS = ["pgh_id", "pgh_created_at", "pgh_label", "pgh_xid", "pgh_obj_id", "pgh_context_id"]

# The events of one batch: the interval's (audit_stream.stream.unfolded), after
# `position`: the last pgh_id of the previous batch of the interval, or, for
# its first batch, just below the interval's lowest pgh_id (audit_stream.stream.interval).
# The primary key walks from there; nothing older is read, whatever vacuum
# has or has not done. It walks at most to `window_end`, a batch's worth of ids
# further (or the interval's highest id), and the interval's tests are row
# filters (unfolded.filter_only), so
# the primary key is the only way in: a batch reads at most `limit` rows
# whatever the planner's statistics say (a table never analysed included).
# A window with fewer events (other transactions', other lanes') leaves the
# rest to the next batch; past an empty one, the next starts just below the
# interval's next id (audit_stream.stream.interval), so gaps cost no reading.
IN_BATCH = f"""WHERE e.pgh_id > %(position)s AND e.pgh_id <= %(window_end)s
      AND {unfolded.filter_only(unfolded.IN_INTERVAL)}"""

# The transaction of an event, kept on its Change: its id (pgh_xid) and the
# command that wrote the event inside it (the row's cmin, a system column
# every row carries for free: event rows are never updated, so it is the
# inserting command's id). Commands count up through a transaction across all
# tables, so (command_id, event_id) is the order a transaction's changes
# happened in (Change.objects.for_transaction). Nothing is added to the write path.
_TRANSACTION_COLUMNS = "e.pgh_xid AS transaction_id, e.cmin::text::bigint AS command_id"

# A batch of an event table. For each event, `before` is the object's previous
# state: the previous event of the object in this batch, else the last change
# already folded for it. _audit_stream_diff (audit_stream.triggers.DIFF_FUNCTION)
# gives {column: [old, new]} for the columns that differ (all of them for an
# object's first event), and {column: [old, null]} for delete events.
#
# Masked fields (audit_stream.masking) are compared as keyed digests: `snapshot`
# and `before` carry them in place of the values (a folded change keeps them in
# mask_digests; a change folded before a field was masked has none, and its
# clear value is never read), and the diff and snapshot written show the mask.
_FOLD_SQL = """
WITH batch AS (
    SELECT e.pgh_id, {object_id} AS object_id, e.pgh_label, {context_id} AS pgh_context_id,
           e.pgh_created_at, {snapshot} AS snapshot,
           {transaction}
    FROM {table} AS e
    {in_interval}
    ORDER BY e.pgh_id
    LIMIT %(limit)s
),
with_before AS (
    SELECT b.*,
           CASE WHEN b.object_id IS NOT NULL THEN coalesce(
               lag(b.snapshot) OVER (PARTITION BY b.object_id ORDER BY b.pgh_id),
               (SELECT {before} FROM audit_stream_change AS c
                WHERE c.event_table = %(event_table)s AND c.object_id = b.object_id
                ORDER BY c.event_id DESC LIMIT 1),
               -- Folded before the table was renamed: under a former name.
               (SELECT {before} FROM audit_stream_change AS c
                WHERE c.event_table = ANY(%(former_tables)s::text[]) AND c.object_id = b.object_id
                ORDER BY c.event_id DESC LIMIT 1)
           ) END AS before
    FROM batch AS b
)
INSERT INTO audit_stream_change
    (event_table, event_id, model, object_id, label, context_id, created_at, diff, snapshot,
     transaction_id, command_id, mask_digests)
SELECT %(event_table)s, w.pgh_id, %(model)s, w.object_id, w.pgh_label, w.pgh_context_id,
       w.pgh_created_at, {diff}, {shown_snapshot}, w.transaction_id, w.command_id, {digests}
FROM with_before AS w
ORDER BY w.pgh_id
RETURNING id, event_id, (extract(epoch FROM clock_timestamp() - created_at) * 1000)::bigint
"""

# The same for the row log of ``initlogging`` (audit_stream.rowlog), which
# keeps only the changed columns of an update: the diff is read from the entry
# itself, and the object's state after each entry is its last known state
# (the previous change folded for it) patched with each entry in order
# (_audit_stream_merge, a running jsonb ||). An insert carries the whole row;
# a row that existed before logging started is known from its first change
# on, so its first snapshots hold only the columns changed so far.
#
# Tables are named as they are now (rowlog.stream_names): an entry logged
# under a former name gets the model (or name) of the table it became, and the
# last known state may have been folded under an earlier name (`aliases`). A
# column dropped by an ALTER TABLE (the DDL log) before an entry leaves the
# state from that entry on.
#
# The DDL log of the same tables is folded with it, in one pgh_id order (both
# logs draw ids from one sequence: audit_stream.rowlog.DDL_ID_SQL), so a
# schema change lands in the feed between the row changes before and after
# it. It becomes a "schema.altered" change of its table: no object id, the
# snapshot describes the table and the command, the diff is
# {column: [type before, type after]} for every column added, dropped or retyped.
#
# Masked columns (audit_stream.masking) are masked as the batch reads the
# entries (`mask_tables`: {model or table: [column, ...]}), so every diff and
# state below is built from masked values; so is the last known state (`known`),
# which may come from before a column was masked.
_LOG_ENTRIES = """
SELECT r.pgh_id, r.pgh_xid, r.cmin::text::bigint AS command_id, r.pgh_obj_id, r.pgh_label,
       r.pgh_context_id, r.pgh_created_at, r.logged_table, r.old_data, r.new_data,
       NULL::jsonb AS schema, NULL::jsonb AS schema_diff
FROM audit_stream_row_log AS r
UNION ALL
SELECT d.pgh_id, d.pgh_xid, d.cmin::text::bigint, NULL, 'schema.altered', NULL, d.pgh_created_at,
       d.logged_table, NULL, NULL,
       jsonb_build_object('table', d.logged_table, 'kind', d.pgh_label, 'statement', d.command,
                          'former_name', d.former_name, 'columns', d.columns_after),
       (SELECT coalesce(jsonb_object_agg(coalesce(a.name, b.name), jsonb_build_array(b.type, a.type)), '{}')
        FROM (SELECT c ->> 'name' AS name, c ->> 'type' AS type
              FROM jsonb_array_elements(d.columns_before) AS c) AS b
        FULL JOIN (SELECT c ->> 'name' AS name, c ->> 'type' AS type
                   FROM jsonb_array_elements(d.columns_after) AS c) AS a ON a.name = b.name
        WHERE a.type IS DISTINCT FROM b.type)
FROM audit_stream_ddl_log AS d
"""

_ROW_LOG_FOLD_SQL = """
WITH batch AS (
    SELECT e.pgh_id, e.pgh_xid, e.pgh_obj_id AS object_id, e.pgh_label, e.pgh_context_id,
           e.pgh_created_at, {old_data} AS old_data, {new_data} AS new_data,
           e.pgh_xid AS transaction_id, e.command_id,
           e.schema, e.schema_diff,
           coalesce(m.model, e.logged_table) AS model,
           coalesce(m.current_table, e.logged_table) AS current_table
    FROM ({log_entries}) AS e
    LEFT JOIN unnest(%(tables)s::text[], %(models)s::text[], %(current_tables)s::text[])
        AS m (logged_table, model, current_table)
        ON m.logged_table = e.logged_table
    {in_interval}
    ORDER BY e.pgh_id
    LIMIT %(limit)s
),
known AS (
    -- Each object's last folded state, unless the batch starts it with an insert.
    SELECT first.model, first.object_id,
           CASE WHEN first.pgh_label <> 'insert' THEN coalesce(
               (SELECT c.snapshot FROM audit_stream_change AS c
                WHERE c.model = first.model AND c.object_id = first.object_id
                ORDER BY c.event_id DESC LIMIT 1),
               (SELECT c.snapshot FROM audit_stream_change AS c
                WHERE c.model IN (SELECT a.alias
                                  FROM unnest(%(alias_of)s::text[], %(aliases)s::text[]) AS a (model, alias)
                                  WHERE a.model = first.model)
                  AND c.object_id = first.object_id
                ORDER BY c.event_id DESC LIMIT 1))
           END AS snapshot
    FROM (SELECT DISTINCT ON (b.model, b.object_id) b.model, b.object_id, b.pgh_label
          FROM batch AS b WHERE b.schema IS NULL ORDER BY b.model, b.object_id, b.pgh_id) AS first
),
with_state AS (
    SELECT b.*,
           {known} || _audit_stream_merge(coalesce(b.new_data, b.old_data)) OVER (
               PARTITION BY b.model, b.object_id ORDER BY b.pgh_id
           ) AS state
    FROM batch AS b
    JOIN known AS k ON k.model = b.model AND k.object_id IS NOT DISTINCT FROM b.object_id
    WHERE b.schema IS NULL
),
ddl AS MATERIALIZED (
    -- The columns of the batch's tables after each ALTER TABLE, by the name the table has now
    -- (the DDL log is small: read once per batch).
    SELECT t.current_table, t.pgh_id, t.pgh_xid, t.columns
    FROM (SELECT coalesce(n.current_table, d.logged_table) AS current_table, d.pgh_id, d.pgh_xid,
                 ARRAY(SELECT column_ ->> 'name' FROM jsonb_array_elements(d.columns_after) AS column_)
                     AS columns
          FROM audit_stream_ddl_log AS d
          LEFT JOIN unnest(%(tables)s::text[], %(current_tables)s::text[]) AS n (logged_table, current_table)
              ON n.logged_table = d.logged_table
          WHERE d.pgh_label IN ('alter', 'rename')) AS t
    WHERE t.current_table IN (SELECT b.current_table FROM batch AS b)
),
with_columns AS (
    -- The state, without the columns the table no longer had when the entry was written.
    SELECT w.*,
           CASE WHEN now_.columns IS NULL THEN w.state
                ELSE (SELECT coalesce(jsonb_object_agg(s.key, s.value), '{}')
                      FROM jsonb_each(w.state) AS s WHERE s.key = ANY(now_.columns))
           END AS current_state
    FROM with_state AS w
    LEFT JOIN LATERAL (
        SELECT ddl.columns FROM ddl
        WHERE ddl.current_table = w.current_table AND ddl.pgh_xid < w.pgh_xid
        ORDER BY ddl.pgh_id DESC LIMIT 1
    ) AS now_ ON true
)
INSERT INTO audit_stream_change
    (event_table, event_id, model, object_id, label, context_id, created_at, diff, snapshot,
     transaction_id, command_id)
SELECT 'audit_stream_row_log', w.pgh_id, w.model, w.object_id, w.pgh_label, w.pgh_context_id,
       w.pgh_created_at,
       CASE w.pgh_label
           WHEN 'insert' THEN _audit_stream_diff(NULL, w.new_data, false)
           WHEN 'delete' THEN _audit_stream_diff(NULL, w.old_data, true)
           ELSE (SELECT jsonb_object_agg(n.key, jsonb_build_array(w.old_data -> n.key, n.value))
                 FROM jsonb_each(w.new_data) AS n)
       END,
       CASE WHEN w.pgh_label = 'delete' THEN w.old_data ELSE w.current_state END,
       w.transaction_id, w.command_id
FROM with_columns AS w
UNION ALL
SELECT 'audit_stream_ddl_log', s.pgh_id, s.model, NULL, s.pgh_label, NULL, s.pgh_created_at,
       s.schema_diff, s.schema, s.transaction_id, s.command_id
FROM batch AS s
WHERE s.schema IS NOT NULL
ORDER BY 2
RETURNING id, event_id, (extract(epoch FROM clock_timestamp() - created_at) * 1000)::bigint
""".replace("{log_entries}", _LOG_ENTRIES)


def sql(
    model, connection, names: list[str], in_interval: str, interval: dict, model_names
) -> tuple[str, dict]:
    """The fold query of ``model``'s table for the events ``in_interval`` selects, and its parameters.

    ``names``: the table's name, then its former ones (changes folded before a
    rename carry those). ``interval``: the parameters of ``in_interval`` (e.g.
    :data:`IN_BATCH`'s ``done``, ``target``, ``position``, ``window_end``,
    ``floor``, ``limit`` and the lane's, :func:`audit_stream.stream.lanes.params`).
    ``model_names``: how the row log names its tables (None for event tables).
    """
    table = model._meta.db_table
    if table == rowlog.ROW_LOG_TABLE:  # always one lane
        mask_tables = masking.row_log_columns(model_names.models)
        entry = masking.MaskSql(
            columns="(%(mask_tables)s::jsonb -> coalesce(m.model, e.logged_table))",
            key="%(mask_pads)s",
            hashed=masking.hashed(),
        )
        known = masking.MaskSql(
            columns="(%(mask_tables)s::jsonb -> b.model)", key="%(mask_pads)s", hashed=masking.hashed()
        )
        text = _ROW_LOG_FOLD_SQL.replace("{in_interval}", in_interval)
        for column in ("old_data", "new_data"):
            value = f"e.{column}"
            text = text.replace(f"{{{column}}}", entry.masked(value) if mask_tables else value)
        # The last known state may hold values folded before their column was masked.
        state = "coalesce(k.snapshot, '{}')"
        text = text.replace("{known}", known.remasked(state) if mask_tables else state)
        return (
            text,
            {
                **interval,
                **model_names.params(),
                "mask_tables": json.dumps(mask_tables),
                "mask_pads": masking.pads() if mask_tables else None,
            },
        )
    masked = masking.columns_of(model)
    mask = masking.MaskSql(columns="%(mask_columns)s::jsonb", key="%(mask_pads)s", hashed=masking.hashed())
    snapshot = "to_jsonb(e) - %(pgh_columns)s::text[]"
    diff = "_audit_stream_diff(w.before, w.snapshot, w.pgh_label = ANY(%(delete_labels)s::text[]))"
    return (
        _FOLD_SQL.format(
            snapshot=mask.digested(snapshot) if masked else snapshot,
            before=mask.before("c") if masked else "c.snapshot",
            diff=mask.shown_pairs(diff) if masked else diff,
            shown_snapshot=mask.shown("w.snapshot") if masked else "w.snapshot",
            digests=mask.digests("w.snapshot") if masked else "NULL::jsonb",
            in_interval=f"{in_interval}\n      AND {lanes.in_lane(model)}",
            transaction=_TRANSACTION_COLUMNS,
            table=connection.ops.quote_name(table),
            # Event models may be declared without obj_fk or context_fk.
            object_id="e.pgh_obj_id::text" if model._pgh_has_obj else "NULL::text",
            context_id="e.pgh_context_id" if model._pgh_has_context else "NULL::uuid",
        ),
        {
            **interval,
            "pgh_columns": PGH_COLUMNS,
            "event_table": table,
            "former_tables": names[1:],
            "model": model.pgh_tracked_model._meta.label_lower,
            "delete_labels": events.delete_labels(model),
            "mask_columns": json.dumps(masked),
            "mask_pads": masking.pads() if masked else None,
        },
    )
