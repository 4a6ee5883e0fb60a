"""Which events the fold has not taken yet: the one SQL definition, reused everywhere.

A table's checkpoint holds ``done``, a PostgreSQL snapshot: every
transaction committed in it has been folded (see audit_stream.stream.fold).
A committed event is unfolded exactly when its transaction is not visible in
``done``, that is when its ``pgh_xid``

* is at or past ``done``'s xmax (the transaction got its id, or committed,
  after ``done`` was taken): :data:`NEW`;
* or is one of ``done``'s in-progress transactions (its xip list):
  :data:`IN_PROGRESS`;

and its ``pgh_id`` is above the checkpoint's ``floor``: events up to it came
from a restore onto this cluster, were folded before it (or by the recovery,
audit_stream.stream.checkpoint), and carry the old cluster's transaction ids,
which this cluster's snapshots would misread. ``floor`` is 0 until a restore.

Every other committed transaction (below xmin, or between xmin and xmax and
not in progress) was visible in ``done``. Written this way, both parts are
ranges or equalities on ``pgh_xid``, which its b-tree index answers in time
proportional to the unfolded events (plus rows of transactions still in
flight), whatever the table's size and whatever vacuum has or has not done.
A ``pg_visible_in_snapshot`` test, the former definition, could only be
checked row by row (a BRIN index narrowed it only to what vacuum had
summarised).

Each fragment reads the event row as ``e``, the snapshot as the bound
parameter ``%(done)s`` and the floor as ``%(floor)s``; the fold's interval
adds the ``%(target)s`` bounds, :data:`WRITTEN` also ``%(position)s``.
"""

from __future__ import annotations

__all__ = ["ABOVE_FLOOR", "IN_INTERVAL", "IN_PROGRESS", "NEW", "UNFOLDED", "WRITTEN", "filter_only"]

# Not one of the restored events a recovery left folded (stream.checkpoint).
# Without a restore `floor` is 0 and the bound value makes the test constant:
# the planner drops it, so it neither filters nor probes the primary key's
# ends for a selectivity estimate (which reads index rows at plan time).
ABOVE_FLOOR = "(%(floor)s = 0 OR e.pgh_id > %(floor)s)"

# Transactions that started, or got their id, after `done` was taken.
NEW = f"(e.pgh_xid >= pg_snapshot_xmax(%(done)s::pg_snapshot)::text::bigint AND {ABOVE_FLOOR})"

# Transactions in progress when `done` was taken (committed since, or this
# query would not see their rows).
IN_PROGRESS = (
    f"(e.pgh_xid = ANY(ARRAY(SELECT pg_snapshot_xip(%(done)s::pg_snapshot)::text::bigint)) AND {ABOVE_FLOOR})"
)

# A committed event the fold has not taken: not visible in `done`, above `floor`.
UNFOLDED = f"({NEW} OR {IN_PROGRESS})"

# The events of one fold interval: unfolded, and committed in `target` (the
# snapshot the fold took when it started the interval). The xmax bound is
# implied by the visibility test; written out, it keeps the range on the index.
IN_INTERVAL = f"""{UNFOLDED}
      AND e.pgh_xid < pg_snapshot_xmax(%(target)s::pg_snapshot)::text::bigint
      AND pg_visible_in_snapshot(e.pgh_xid::text::xid8, %(target)s::pg_snapshot)"""

# Of the unfolded events, those a fold half-way through its interval has
# already written: in `target` (when there is one), up to `position`. (Without
# a target, coalesce() makes the test "visible in done": false for an
# unfolded event.)
WRITTEN = """(e.pgh_id <= %(position)s
               AND pg_visible_in_snapshot(e.pgh_xid::text::xid8,
                                          coalesce(%(target)s, %(done)s)::pg_snapshot))"""


def filter_only(fragment: str) -> str:
    """``fragment`` with its tests of ``pgh_xid`` written so no index can answer them: row filters only.

    For a query that must walk the primary key whatever the planner believes
    (the fold's batch, audit_stream.stream.fold): without statistics, on a
    table never analysed, the planner takes an interval's ``pgh_xid`` range
    for a few hundred rows and reads all of it through that index, for every
    batch.
    """
    return fragment.replace("e.pgh_xid", "(e.pgh_xid + 0)")
