"""Re-masking: history folded before a field was masked, rewritten with the current mask settings.

A field added to ``track(mask=...)`` or ``AUDIT_STREAM["MASK"]`` is masked in
what the fold writes from then on (:mod:`audit_stream.masking`); the changes
folded before keep its clear value, and so do the messages recorded for them
and not delivered yet. :func:`remask` (``manage.py mask_history``) rewrites
them, in short batches (one transaction each), with the one masking SQL the
fold uses:

* ``Change.diff`` and ``Change.snapshot``: each side of a masked key that is
  not already in a mask's form is masked (a keyed mask when ``MASK_KEY`` is
  set); ``Change.mask_digests`` gains the keyed digest of each value masked, so
  the next change of the object compares against it (as if the field had
  been masked when the change was folded);
* the ``data.diff`` and ``data.snapshot`` of every webhook and sink message
  that is still owed or dead (a replay would send it again);
* delivered messages are counted, not rewritten: their receivers have them.

Not rewritten: the event tables and the row log (history: they keep the
clear value by design, for revert, undo and ``as_of``, and are append-only),
and schema changes (``schema.altered``: their diff holds column types).

Idempotent: a value in a mask's form is left as it is, so a second run
rewrites nothing, and a run after ``MASK_KEY`` is set leaves earlier
``"***"`` masks as they are. Each batch reads a page of the table by primary key
(bounded work and locks whatever the table's size) and updates only the rows
that change, so it runs beside a working stream: a change the fold writes
meanwhile is written masked already if the worker runs the same settings.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field

from django.db import DEFAULT_DB_ALIAS, connections, transaction

from audit_stream import masking

__all__ = ["TABLES", "Report", "masked_labels", "remask"]

#: What :func:`remask` rewrites: ``{name in reports: table}``.
TABLES = {
    "changes": "audit_stream_change",
    "webhook_messages": "audit_stream_webhookmessage",
    "sink_messages": "audit_stream_sinkmessage",
}

_FIRST_KEY = {"changes": 0, "webhook_messages": "00000000-0000-0000-0000-000000000000"}
_FIRST_KEY["sink_messages"] = _FIRST_KEY["webhook_messages"]

# Schema changes of logged tables: their diff maps columns to types, never values.
_SCHEMA_LABEL = "schema.altered"

# The distinct labels of the change feed, one index probe each (a loose scan of
# audit_stream_change_object: PostgreSQL 15 has no skip scan).
_LABELS_SQL = """
WITH RECURSIVE labels AS (
    SELECT min(model) AS model FROM audit_stream_change
    UNION ALL
    SELECT (SELECT min(c.model) FROM audit_stream_change AS c WHERE c.model > labels.model)
    FROM labels WHERE labels.model IS NOT NULL
)
SELECT model FROM labels WHERE model IS NOT NULL
"""

# One page of a table by primary key (after %(after)s), and its rows to rewrite:
# {remasked} selects, per row of the page, `id`, the remasked `diff`, `snapshot`
# and `digests`, and `current` (the diff and snapshot as they are); {write}
# rewrites the rows whose diff or snapshot changes and returns each (a dry run: none).
_BATCH_SQL = """
WITH page AS (
    SELECT p.id FROM {table} AS p WHERE p.id > %(after)s ORDER BY p.id LIMIT %(limit)s
), remasked AS (
    {remasked}
), changed AS (
    SELECT * FROM remasked WHERE remasked.diff <> remasked.current_diff
                              OR remasked.snapshot <> remasked.current_snapshot
), written AS (
    {write}
)
SELECT (SELECT page.id::text FROM page ORDER BY page.id DESC LIMIT 1), (SELECT count(*) FROM page),
       (SELECT count(*) FROM written),
       (SELECT count(*) FROM changed WHERE changed.delivered)
"""

_NOTHING_WRITTEN = "SELECT 1 WHERE false"

# A change (`c`), keyed by its model label.
_CHANGE_ROWS_SQL = """SELECT c.id, false AS delivered, c.diff AS current_diff, c.snapshot AS current_snapshot,
           {diff} AS diff, {snapshot} AS snapshot, {digests} AS digests
    FROM audit_stream_change AS c JOIN page ON page.id = c.id
    WHERE c.model = ANY(%(labels)s::text[]) AND c.label <> %(schema_label)s"""

_CHANGE_WRITE_SQL = """UPDATE audit_stream_change AS c
       SET diff = changed.diff, snapshot = changed.snapshot,
           mask_digests = CASE WHEN changed.digests IS NULL THEN c.mask_digests
                               ELSE coalesce(c.mask_digests, '{}'::jsonb) || changed.digests END
      FROM changed WHERE c.id = changed.id
    RETURNING c.id"""

# A webhook or sink message (`c`: the name the masking SQL reads the label from), whose
# payload is the feed format (audit_stream.payload); a test message has no diff.
_MESSAGE_ROWS_SQL = """SELECT c.id, c.status = 'delivered' AS delivered,
           c.payload #> '{{data,diff}}' AS current_diff, c.payload #> '{{data,snapshot}}' AS current_snapshot,
           {diff} AS diff, {snapshot} AS snapshot, NULL::jsonb AS digests
    FROM {table} AS c JOIN page ON page.id = c.id
    WHERE (c.payload #>> '{{data,model}}') = ANY(%(labels)s::text[])
      AND (c.payload #>> '{{data,label}}') <> %(schema_label)s
      AND jsonb_typeof(c.payload #> '{{data,diff}}') = 'object'
      AND jsonb_typeof(c.payload #> '{{data,snapshot}}') = 'object'"""

# Delivered messages are gone to their receivers: left as they are (counted).
_MESSAGE_WRITE_SQL = """UPDATE {table} AS m
       SET payload = jsonb_set(jsonb_set(m.payload, '{{data,diff}}', changed.diff),
                               '{{data,snapshot}}', changed.snapshot)
      FROM changed WHERE m.id = changed.id AND NOT changed.delivered
    RETURNING m.id"""


@dataclass
class Report:
    """What :func:`remask` found and did, per table (:data:`TABLES`)."""

    dry_run: bool
    labels: dict[str, list[str]]
    read: dict[str, int] = field(default_factory=dict)
    rewritten: dict[str, int] = field(default_factory=dict)
    delivered: dict[str, int] = field(default_factory=dict)  # delivered messages that carried clear values


def masked_labels(using: str = DEFAULT_DB_ALIAS) -> dict[str, list[str]]:
    """``{label: [masked column, ...]}`` for every label of the change feed with a masked field.

    A label is a model (``"app_label.model"``) or a table logged by
    ``initlogging`` without a model (``"schema.table"``), as ``Change.model`` holds it.
    """
    with connections[using].cursor() as cursor:
        cursor.execute(_LABELS_SQL)
        labels = [row[0] for row in cursor.fetchall()]
    found = {label: sorted(masking.label_columns(label)) for label in labels}
    return {label: columns for label, columns in found.items() if columns}


def _batch_sql(name: str, dry_run: bool) -> str:
    """One batch of table ``name``; the masked columns of each row picked by its label."""
    table = TABLES[name]
    label = "c.model" if name == "changes" else "(c.payload #>> '{data,model}')"
    columns = f"(%(columns)s::jsonb -> {label})"
    mask = masking.MaskSql(columns=columns, key="%(pads)s", hashed=masking.hashed())
    if name == "changes":
        remasked = _CHANGE_ROWS_SQL.format(
            diff=mask.remasked_pairs("c.diff"),
            snapshot=mask.remasked("c.snapshot"),
            digests=mask.missing_digests("c.snapshot", "c.mask_digests"),
        )
        write = _CHANGE_WRITE_SQL
    else:
        remasked = _MESSAGE_ROWS_SQL.format(
            table=table,
            diff=mask.remasked_pairs("(c.payload #> '{data,diff}')"),
            snapshot=mask.remasked("(c.payload #> '{data,snapshot}')"),
        )
        write = _MESSAGE_WRITE_SQL.format(table=table)
    return _BATCH_SQL.format(table=table, remasked=remasked, write=_NOTHING_WRITTEN if dry_run else write)


def remask(
    *,
    labels: dict[str, list[str]],
    batch_size: int = 1000,
    dry_run: bool = False,
    progress: Callable[[str, int, int], None] | None = None,
    using: str = DEFAULT_DB_ALIAS,
) -> Report:
    """Rewrite the changes of ``labels`` (:func:`masked_labels`) and their owed messages with their masks.

    One transaction per page of ``batch_size`` rows of each table;
    ``progress(name, rows read, rows in all)`` after each. With ``dry_run``
    nothing is written: the report counts what would be.
    """
    report = Report(dry_run=dry_run, labels=labels)
    if not labels:
        return report
    params = {
        "columns": json.dumps(labels),
        "pads": masking.pads(),
        "labels": sorted(labels),
        "schema_label": _SCHEMA_LABEL,
        "limit": batch_size,
    }
    connection = connections[using]
    for name, table in TABLES.items():
        sql = _batch_sql(name, dry_run)
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT count(*) FROM {table}")  # for the progress bar only
            total = cursor.fetchone()[0]
        after = _FIRST_KEY[name]
        report.read[name] = report.rewritten[name] = report.delivered[name] = 0
        while True:
            # One short transaction per page: its row locks are held for one batch at most.
            with transaction.atomic(using=using), connection.cursor() as cursor:
                cursor.execute(sql, {**params, "after": after})
                last, read, rewritten, delivered = cursor.fetchone()
            if last is None:
                break
            after = int(last) if name == "changes" else last
            report.read[name] += read
            report.rewritten[name] += rewritten
            report.delivered[name] += delivered
            if progress is not None:
                progress(name, report.read[name], max(total, report.read[name]))
    return report
