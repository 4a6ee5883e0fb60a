"""Partitioned history: event tables, the row log and the change feed as native range partitions.

Declared per model in the ``PARTITIONS`` setting::

    AUDIT_STREAM = {"PARTITIONS": {"shop.ProductEvent": {"size": 1_000_000, "ahead": 2}}}

(``"audit_stream.RowLog"`` for the row log, ``"audit_stream.Change"`` for the
change feed, ``"default"`` for every event model not named). The partition key
is the table's primary key, which stays the key everything else relies on:
``pgh_id`` for events (the fold walks it, ``Change.event_id`` points at it),
``id`` for changes (the feed's cursor). Ids are drawn in time order, so ranges
of ``size`` ids follow time: ``<table>_p<first id>`` holds ids ``[first id,
first id + size)``; ``<table>_default`` catches anything else (the dashboard
warns when it holds rows).

A unique key that does not contain the partition key cannot be declared on a
partitioned table. The change feed's ``(event_table, event_id)`` key (a
second fold of one event fails there) becomes a unique index of each
partition (:attr:`Layout.local_unique`): it still refuses a second fold into
the same partition, which a concurrent double fold would write to (its ids
are drawn next to the first's); the fold's checkpoint lock is what makes
each event folded once (invariant 1's tests run on both layouts).

* :func:`convert` turns an existing table into the first partition of a new
  partitioned table of the same name in one short transaction: no row is
  copied (the table is attached, its indexes matched; the attach reads it once
  to validate the range). ``manage.py partition_history`` runs it, and
  ``migrate`` runs it for every declared table.
* :func:`ensure` creates the partitions ahead (``ahead`` empty ranges past the
  id sequence), so a write never lands in the default partition; beat runs it
  (task ``audit_stream.ensure_partitions``) and so does ``migrate``. It also
  records, in a table comment, when the sequence passed a partition's end:
  every event of the partition was created before that time (an event's
  ``pgh_created_at`` is its transaction's start, before its id was drawn).
* Retention (:mod:`audit_stream.retention`) drops the partitions whose events
  are all past ``max_age`` by that bound and all folded (:func:`droppable`).

The package's modules: :mod:`~audit_stream.partitions.layout` (what a table
looks like), :mod:`~audit_stream.partitions.conversion` (:func:`convert`,
:func:`sync`), :mod:`~audit_stream.partitions.ahead` (:func:`ensure` and the
partition function, its SQL in ``ensure_partitions.sql``) and
:mod:`~audit_stream.partitions.drops` (retention's drops).
"""

from audit_stream.partitions.ahead import (
    DROP_ENSURE_FUNCTION,
    default_rows,
    ensure,
    ensure_all,
    ensure_function,
)
from audit_stream.partitions.conversion import convert, sync
from audit_stream.partitions.drops import (
    DETACHED,
    aged,
    drop_detached,
    drop_leftovers,
    droppable,
    leftovers,
    mark_detached,
    replace_lowest,
    retry_on_lock_timeout,
)
from audit_stream.partitions.layout import (
    Layout,
    Partition,
    declared,
    is_partitioned,
    layout_of,
    partitions,
    to_regclass,
)

__all__ = [
    "DETACHED",
    "DROP_ENSURE_FUNCTION",
    "Layout",
    "Partition",
    "aged",
    "convert",
    "declared",
    "default_rows",
    "drop_detached",
    "drop_leftovers",
    "droppable",
    "ensure",
    "ensure_all",
    "ensure_function",
    "is_partitioned",
    "layout_of",
    "leftovers",
    "mark_detached",
    "partitions",
    "replace_lowest",
    "retry_on_lock_timeout",
    "sync",
    "to_regclass",
]
