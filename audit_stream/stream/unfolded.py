"""Which events the fold has not taken yet: the one SQL definition, reused everywhere.

A table's checkpoint holds ``done``, a PostgreSQL snapshot: every
transaction committed in it has been folded (see audit_stream.stream.fold).
A committed event is unfolded exactly when its transaction is not visible in
``done``, that is when its ``pgh_xid``

* is at or past ``done``'s xmax (the transaction got its id, or committed,
  after ``done`` was taken): :data:`NEW`;
* or is one of ``done``'s in-progress transactions (its xip list):
  :data:`IN_PROGRESS`.

Every other committed transaction (below xmin, or between xmin and xmax and
not in progress) was visible in ``done``. Written this way, both parts are
ranges or equalities on ``pgh_xid``, which its b-tree index answers in time
proportional to the unfolded events (plus rows of transactions still in
flight), whatever the table's size and whatever vacuum has or has not done.
A ``pg_visible_in_snapshot`` test, the former definition, could only be
checked row by row (a BRIN index narrowed it only to what vacuum had
summarised).

Each fragment reads the event row as ``e`` and the snapshot as the bound
parameter ``%(done)s``; the fold's interval adds the ``%(target)s`` bounds.
"""

from __future__ import annotations

__all__ = ["IN_INTERVAL", "IN_PROGRESS", "NEW", "UNFOLDED"]

# Transactions that started, or got their id, after `done` was taken.
NEW = "e.pgh_xid >= pg_snapshot_xmax(%(done)s::pg_snapshot)::text::bigint"

# Transactions in progress when `done` was taken (committed since, or this
# query would not see their rows).
IN_PROGRESS = "e.pgh_xid = ANY(ARRAY(SELECT pg_snapshot_xip(%(done)s::pg_snapshot)::text::bigint))"

# A committed event the fold has not taken: not visible in `done`.
UNFOLDED = f"({NEW} OR {IN_PROGRESS})"

# The events of one fold interval: unfolded, and committed in `target` (the
# snapshot the fold took when it started the interval). The xmax bound is
# implied by the visibility test; written out, it keeps the range on the index.
IN_INTERVAL = f"""{UNFOLDED}
      AND e.pgh_xid < pg_snapshot_xmax(%(target)s::pg_snapshot)::text::bigint
      AND pg_visible_in_snapshot(e.pgh_xid::text::xid8, %(target)s::pg_snapshot)"""
