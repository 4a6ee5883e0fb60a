"""Retention: the one code path allowed to delete history.

Policies come from ``AUDIT_STREAM["RETENTION"]``::

    AUDIT_STREAM = {
        "RETENTION": {
            "default": {"max_age": "365d"},               # every event table
            "shop.OrderEvent": {"max_age": "90d", "keep_last": 10},
            "row_log": {"max_age": "90d"},                # initlogging's row log
            "changes": {"max_age": "180d", "keep_last": 1},
            "webhook_messages": {"max_age": "30d"},       # delivered and dead ones only
            "webhook_attempts": {"max_age": "30d"},
            "sink_messages": {"max_age": "30d"},          # delivered and dead ones only
        }
    }

``max_age`` (``"90d"``, ``"12h"``, ``"2w"``...) deletes what is older; with
``keep_last`` too, the last N rows of each object are kept whatever their age;
``keep_last`` alone keeps the last N per object; ``None`` (or no policy) keeps
forever. Defaults: events and changes are kept forever; delivered and dead
webhook messages, their attempts, and delivered and dead sink messages for 30
days. Contexts that nothing references any more are pruned once they are an
hour old.

Safety:

* An event is deleted only once the stream has folded it: its transaction is
  visible in the table's checkpoint snapshot. ``force=True`` overrides this.
  A checkpoint restored from another cluster says nothing about this one's
  transactions: until the fold has recovered it, the table's events are not
  pruned (the run reports why).
* An object's latest change is never pruned, whatever the policy: the fold
  takes the object's previous state from it.
* Rows to delete are chosen by a read (no lock), then deleted by primary key
  in short transactions of ``batch_size`` rows, so a concurrent writer waits
  at most for one batch.
* A partitioned event table (:mod:`audit_stream.partitions`) under a
  ``max_age`` policy without ``keep_last`` loses whole partitions first: each
  one, lowest ids first, whose events were all created before the cutoff and
  are all folded (never one holding an unfolded event) is detached and
  dropped, milliseconds whatever its size and no WAL per row. The partition
  that straddles the cutoff is pruned in batches, as above.
* Event tables refuse DELETE (:class:`audit_stream.triggers.AppendOnly`);
  each batch lifts that for its own transaction only, with :func:`allow_prune`.
* Deleting history (events, the row log, contexts) is a privilege: the
  ``DELETE`` privilege on those tables, which the owner role has and the
  runtime role is never granted (``manage.py audit_stream_grants``). A role
  without it prunes the stream's tables, reports for each history table with
  a policy that it needs the owner role (or ``--pruner``), and leaves
  unreferenced contexts to a role that may delete them.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta

from django.db import DEFAULT_DB_ALIAS, connections, transaction
from django.utils import timezone

from audit_stream import config, partitions, triggers
from audit_stream.stream import unfolded

__all__ = [
    "Policy",
    "PruneReport",
    "allow_prune",
    "describe_policies",
    "erase",
    "parse_duration",
    "policies",
    "prune",
]

CHANGES = "changes"
ROW_LOG = "row_log"
MESSAGES = "webhook_messages"
ATTEMPTS = "webhook_attempts"
SINK_MESSAGES = "sink_messages"
CONTEXTS = "contexts"
_SPECIAL = (CHANGES, MESSAGES, ATTEMPTS, SINK_MESSAGES)
_DEFAULTS = {MESSAGES: {"max_age": "30d"}, ATTEMPTS: {"max_age": "30d"}, SINK_MESSAGES: {"max_age": "30d"}}
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_CONTEXT_GRACE = timedelta(hours=1)


@contextlib.contextmanager
def allow_prune(using: str = DEFAULT_DB_ALIAS) -> Iterator[None]:
    """Allow DELETE on event tables until the end of the current transaction.

    Must be used inside ``transaction.atomic()``: the permission is a
    transaction-local setting, so it can never outlive the batch it was
    opened for.
    """
    connection = connections[using]
    if not connection.in_atomic_block:
        raise RuntimeError("allow_prune() must be used inside transaction.atomic(), so it ends with it.")
    with connection.cursor() as cursor:
        cursor.execute("SELECT set_config(%s, 'on', true)", [triggers.ALLOW_PRUNE_SETTING])
    try:
        yield
    finally:
        if connection.in_atomic_block and not connection.needs_rollback:
            with connection.cursor() as cursor:
                cursor.execute("SELECT set_config(%s, '', true)", [triggers.ALLOW_PRUNE_SETTING])


def may_delete(table: str, using: str = DEFAULT_DB_ALIAS) -> bool:
    """Whether the connected role holds the ``DELETE`` privilege on ``table``."""
    with connections[using].cursor() as cursor:
        cursor.execute("SELECT has_table_privilege(%s, 'DELETE')", [triggers.qualified(table)])
        return cursor.fetchone()[0]


def _privilege_error(table: str) -> str:
    return (
        f"the role this runs as may not delete from {table} (history): prune it as the owner role"
        " (manage.py prune_history), or grant the privilege with manage.py audit_stream_grants --pruner."
    )


def parse_duration(value: str) -> timedelta:
    """``"90d"`` → 90 days. Units: s, m, h, d, w. Raises ``ValueError`` with the accepted forms."""
    match = re.fullmatch(r"\s*(\d+)\s*([smhdw])\s*", str(value))
    if not match or int(match.group(1)) == 0:
        raise ValueError(
            f"{value!r} is not a duration; write a positive number and a unit, e.g. 90d, 12h, 2w."
        )
    return timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])


@dataclass(frozen=True)
class Policy:
    """What to keep of one table. ``max_age`` None and ``keep_last`` None: keep forever."""

    max_age: timedelta | None = None
    keep_last: int | None = None

    @property
    def keeps_forever(self) -> bool:
        return self.max_age is None and self.keep_last is None

    @classmethod
    def parse(cls, value: dict | None, where: str) -> Policy:
        if value is None:
            return cls()
        if not isinstance(value, dict):
            raise ValueError(f"{where} must be a dict like {{'max_age': '90d', 'keep_last': 10}} or None.")
        unknown = set(value) - {"max_age", "keep_last"}
        if unknown:
            raise ValueError(f"{where} has unknown keys {sorted(unknown)}; use max_age and keep_last.")
        max_age = value.get("max_age")
        keep_last = value.get("keep_last")
        if keep_last is not None and (
            not isinstance(keep_last, int) or isinstance(keep_last, bool) or keep_last < 1
        ):
            raise ValueError(f"{where}['keep_last'] must be a positive integer or None, not {keep_last!r}.")
        try:
            age = parse_duration(max_age) if max_age is not None else None
        except ValueError as exc:
            raise ValueError(f"{where}['max_age']: {exc}") from None
        return cls(age, keep_last)

    def describe(self) -> dict:
        return {
            "max_age": f"{int(self.max_age.total_seconds())}s" if self.max_age else None,
            "keep_last": self.keep_last,
        }


def _event_model_labels() -> dict[str, type]:
    from audit_stream import tracking

    return {model._meta.label: model for model in tracking._event_models.values()}


def policies() -> dict[str, Policy]:
    """The policy of every target: each event model's label, changes, webhook and sink messages, attempts.

    Raises ``ValueError`` for an invalid setting (also reported by the system checks).
    """
    raw = config.retention()
    if not isinstance(raw, dict):
        raise ValueError('AUDIT_STREAM["RETENTION"] must be a dict of policies.')
    models = _event_model_labels()
    lower = {label.lower(): label for label in models}
    for key in raw:
        if key not in ("default", ROW_LOG) and key not in _SPECIAL and key.lower() not in lower:
            raise ValueError(
                f'AUDIT_STREAM["RETENTION"] has an unknown key {key!r}: use "default", "row_log", "changes",'
                ' "webhook_messages", "webhook_attempts", "sink_messages" or an event model label such as'
                f" {next(iter(sorted(models)), 'shop.OrderEvent')!r}."
            )
    default = Policy.parse(raw.get("default"), 'AUDIT_STREAM["RETENTION"]["default"]')
    by_lower = {k.lower(): v for k, v in raw.items()}
    result = {}
    for label in sorted(models):
        if label.lower() in by_lower:
            result[label] = Policy.parse(by_lower[label.lower()], f'AUDIT_STREAM["RETENTION"][{label!r}]')
        else:
            result[label] = default
    result[ROW_LOG] = (
        Policy.parse(raw[ROW_LOG], f'AUDIT_STREAM["RETENTION"][{ROW_LOG!r}]') if ROW_LOG in raw else default
    )
    for key in _SPECIAL:
        result[key] = Policy.parse(raw.get(key, _DEFAULTS.get(key)), f'AUDIT_STREAM["RETENTION"][{key!r}]')
    return result


def describe_policies() -> list[dict]:
    """The policies in force, for the dashboard: ``[{"target", "max_age", "keep_last"}]``."""
    return [{"target": target, **policy.describe()} for target, policy in policies().items()]


@dataclass
class PruneReport:
    """Rows deleted (or, in a dry run, that would be) per table, and how long it took."""

    rows: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    dry_run: bool = False

    @property
    def total(self) -> int:
        return sum(self.rows.values())


# --- choosing rows: one read per table, into a temporary table -----------------------------------
#
# The candidates are chosen by a plain SELECT (no locks) into a temporary table
# of primary keys; the deletes then take them in primary-key order, in short
# transactions. Event rows must also be folded: not unfolded in the sense of
# audit_stream.stream.unfolded (their transaction is visible in the table's
# checkpoint snapshot, or they are restored events up to its `floor`).

_EVENT_CANDIDATES = """
INSERT INTO _audit_stream_doomed (id)
SELECT pgh_id FROM (
    SELECT e.pgh_id, e.pgh_created_at, e.pgh_xid,
           row_number() OVER (PARTITION BY {object} ORDER BY e.pgh_id DESC) AS newest
    FROM ({rows}) AS e
) AS e
WHERE (%(cutoff)s::timestamptz IS NULL OR pgh_created_at < %(cutoff)s)
  AND (%(keep_last)s::int IS NULL OR newest > %(keep_last)s)
  AND (%(force)s OR (%(done)s::pg_snapshot IS NOT NULL AND NOT {unfolded}))
  AND (%(above)s::bigint IS NULL OR pgh_id >= %(above)s)
""".replace("{unfolded}", unfolded.UNFOLDED)

# Without keep_last, no ranking: the old enough, folded events.
_EVENT_CANDIDATES_BY_AGE = """
INSERT INTO _audit_stream_doomed (id)
SELECT e.pgh_id FROM {table} AS e
WHERE e.pgh_created_at < %(cutoff)s
  AND (%(force)s OR (%(done)s::pg_snapshot IS NOT NULL AND NOT {unfolded}))
  AND (%(above)s::bigint IS NULL OR e.pgh_id >= %(above)s)
""".replace("{unfolded}", unfolded.UNFOLDED)

# Only objects with more than keep_last events can lose one: the ranking reads
# their events alone, found by one grouping pass (a hash of the object ids, no
# sort of the whole table). Events without an object are one object, as in the
# ranking's PARTITION BY (a branch of their own: an OR would defeat the semi-join).
_CROWDED_EVENTS = """
SELECT * FROM {table} AS e
WHERE ({object}) IN (SELECT {object} FROM {table} AS e GROUP BY {object} HAVING count(*) > %(keep_last)s)
UNION ALL
SELECT * FROM {table} AS e WHERE e.pgh_obj_id IS NULL
"""

# An object is one row of one table: for the row log, of one model (or
# table). Its latest change stays whatever the policy: the fold diffs the
# object's next event against it (and patches the row log's changed columns
# onto it), so without it the next change would list every column as new.
# Only objects with more changes than are kept are ranked (see _CROWDED_EVENTS:
# grouped by table and object id, a superset of the objects, so none is missed).
_CHANGE_CANDIDATES = """
INSERT INTO _audit_stream_doomed (id)
SELECT id FROM (
    SELECT c.id, c.created_at,
           row_number() OVER (PARTITION BY c.event_table, c.model, c.object_id ORDER BY c.event_id DESC)
               AS newest
    FROM (
        SELECT * FROM audit_stream_change AS c
        WHERE (c.event_table, c.object_id) IN (
                  SELECT event_table, object_id FROM audit_stream_change
                  GROUP BY event_table, object_id HAVING count(*) > greatest(1, %(keep_last)s::int))
        UNION ALL
        SELECT * FROM audit_stream_change AS c WHERE c.object_id IS NULL
    ) AS c
) AS ranked
WHERE newest > 1
  AND (%(cutoff)s::timestamptz IS NULL OR created_at < %(cutoff)s)
  AND (%(keep_last)s::int IS NULL OR newest > %(keep_last)s)
  AND (%(above)s::bigint IS NULL OR id >= %(above)s)
"""

# A webhook or sink message that is settled (delivered, or dead: replay makes
# it owed again) and older than the cutoff. Messages still owed (pending,
# sending) are never pruned.
_SETTLED_BEFORE_CUTOFF = "status IN ('delivered', 'dead') AND created_at < %(cutoff)s"

_MESSAGE_CANDIDATES = f"""
INSERT INTO _audit_stream_doomed_uuid (id)
SELECT id FROM audit_stream_webhookmessage
WHERE {_SETTLED_BEFORE_CUTOFF}
"""

_SINK_MESSAGE_CANDIDATES = f"""
INSERT INTO _audit_stream_doomed_uuid (id)
SELECT id FROM audit_stream_sinkmessage
WHERE {_SETTLED_BEFORE_CUTOFF}
"""

_ATTEMPT_CANDIDATES = """
INSERT INTO _audit_stream_doomed (id)
SELECT id FROM audit_stream_webhookattempt WHERE attempted_at < %(cutoff)s
"""

# --- deleting: one short transaction per batch ---------------------------------------------------

_DELETE_BATCH = """
WITH batch AS (
    DELETE FROM {doomed}
    WHERE id IN (SELECT id FROM {doomed} ORDER BY id LIMIT %(batch)s)
    RETURNING id
)
DELETE FROM {table} AS t USING batch WHERE t.{pk} = batch.id
"""

_DELETE_MESSAGE_BATCH = """
WITH batch AS (
    DELETE FROM _audit_stream_doomed_uuid
    WHERE id IN (SELECT id FROM _audit_stream_doomed_uuid ORDER BY id LIMIT %(batch)s)
    RETURNING id
), attempts AS (
    DELETE FROM audit_stream_webhookattempt AS a USING batch WHERE a.message_id = batch.id
)
DELETE FROM audit_stream_webhookmessage AS m USING batch WHERE m.id = batch.id
"""

# Contexts that no event and no change points to any more (and old enough not
# to belong to a request still under way). {not_in_events} adds one NOT EXISTS
# per event table that has a context column.
_CONTEXT_CANDIDATES = """
SELECT ctx.id FROM audit_stream_context AS ctx
WHERE ctx.updated_at < %(grace)s
  AND NOT EXISTS (SELECT 1 FROM audit_stream_change AS c WHERE c.context_id = ctx.id)
  {not_in_events}
"""


Progress = Callable[[str, int, int], None]


def prune(
    *,
    using: str = DEFAULT_DB_ALIAS,
    targets: list[str] | None = None,
    overrides: Policy | None = None,
    batch_size: int = 10_000,
    dry_run: bool = False,
    force: bool = False,
    progress: Progress | None = None,
) -> PruneReport:
    """Apply the retention policies.

    Args:
        targets: Restrict to these targets (event model labels, ``"row_log"``, ``"changes"``,
            ``"webhook_messages"``, ``"webhook_attempts"``, ``"sink_messages"``); all by default.
        overrides: A policy that replaces the configured one for every target.
        batch_size: Rows per delete transaction.
        dry_run: Count what would be deleted; delete nothing.
        force: Also delete events the stream has not folded yet.
        progress: Called as ``progress(table, done, total)`` while deleting.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be a positive number of rows.")
    configured = policies()
    chosen = targets or list(configured)
    unknown = [t for t in chosen if t not in configured]
    if unknown:
        raise ValueError(f"Unknown retention target(s) {unknown}; known: {', '.join(configured)}.")
    report = PruneReport(dry_run=dry_run)
    connection = connections[using]
    models = _event_model_labels()
    now = timezone.now()
    pruned_events = False
    with connection.cursor() as cursor:
        cursor.execute("CREATE TEMPORARY TABLE IF NOT EXISTS _audit_stream_doomed (id bigint PRIMARY KEY)")
        cursor.execute("CREATE TEMPORARY TABLE IF NOT EXISTS _audit_stream_doomed_uuid (id uuid PRIMARY KEY)")
    try:
        for target in chosen:
            policy = overrides or configured[target]
            if policy.keeps_forever:
                continue
            cutoff = now - policy.max_age if policy.max_age else None
            started = time.monotonic()
            try:
                if target in models or target == ROW_LOG:
                    model = models[target] if target in models else _row_log_model()
                    if not dry_run and not may_delete(model._meta.db_table, using):
                        report.errors.append(f"{target}: {_privilege_error(model._meta.db_table)}")
                        continue
                    table, count = _prune_events(
                        connection, model, policy, cutoff, batch_size, dry_run, force, progress
                    )
                    pruned_events = pruned_events or count > 0
                elif target == CHANGES:
                    dropped, above = _drop_change_partitions(connection, policy, cutoff, dry_run, progress)
                    table, count = _prune_simple(
                        connection, "audit_stream_change", _CHANGE_CANDIDATES, policy, cutoff, batch_size,
                        dry_run, progress, above,
                    )  # fmt: skip
                    count += dropped
                elif target == ATTEMPTS:
                    table, count = _prune_simple(
                        connection, "audit_stream_webhookattempt", _ATTEMPT_CANDIDATES, policy, cutoff,
                        batch_size, dry_run, progress,
                    )  # fmt: skip
                elif target == SINK_MESSAGES:
                    table, count = _prune_simple(
                        connection, "audit_stream_sinkmessage", _SINK_MESSAGE_CANDIDATES, policy, cutoff,
                        batch_size, dry_run, progress, doomed="_audit_stream_doomed_uuid",
                    )  # fmt: skip
                else:
                    table, count = _prune_messages(connection, cutoff, batch_size, dry_run, progress)
            except Exception as exc:  # one table's failure is reported, the others still run
                report.errors.append(f"{target}: {exc}")
                continue
            report.rows[table] = report.rows.get(table, 0) + count
            report.seconds[table] = time.monotonic() - started
        # Unreferenced contexts are garbage, not a policy anyone asked for: a role
        # without the privilege (the runtime role's worker) leaves them to the owner.
        if (not targets or pruned_events) and (dry_run or may_delete("audit_stream_context", using)):
            started = time.monotonic()
            report.rows["audit_stream_context"] = _prune_contexts(connection, now, batch_size, dry_run)
            report.seconds["audit_stream_context"] = time.monotonic() - started
    finally:
        with connection.cursor() as cursor:
            cursor.execute("DROP TABLE IF EXISTS _audit_stream_doomed, _audit_stream_doomed_uuid")
    return report


def _checkpoint(cursor, table: str) -> tuple[str | None, int, bool]:
    """The table's folded snapshot, restored floor, and whether it is of another cluster.

    For a table folded in several lanes: what every lane has folded (the
    earliest lane's snapshot, the lowest floor), so no lane's unfolded event is pruned.
    """
    from audit_stream.stream import checkpoint

    return checkpoint.folded(cursor, table)


# Choosing reads whole tables once (a grouping pass, see _CROWDED_EVENTS): no
# JIT compilation (100-250 ms of each statement at 1M rows) and no parallel
# workers (each one repeated the whole grouping to build its own hash).
_CHOOSING_SETTINGS = "SET LOCAL jit = off; SET LOCAL max_parallel_workers_per_gather = 0"


def _fill(cursor, sql: str, params: dict, *, count_only: bool = False) -> int:
    """Choose the candidates of ``sql`` (an ``INSERT INTO <temporary table> (id) SELECT ...``).

    ``count_only`` (dry runs): count them instead, without writing a
    temporary table and its index: the same rows, exactly, at a fraction of
    the cost.
    """
    with transaction.atomic(using=cursor.db.alias):
        cursor.execute(_CHOOSING_SETTINGS)
        if count_only:
            select = sql.strip().split("\n", 1)[1]  # the SELECT without its INSERT line
            cursor.execute(f"SELECT count(*) FROM ({select}) AS candidates", params)
            return cursor.fetchone()[0]
        cursor.execute("TRUNCATE _audit_stream_doomed, _audit_stream_doomed_uuid")
        cursor.execute(sql, params)
        return cursor.rowcount


def _drain(
    connection,
    table: str,
    pk: str,
    total: int,
    batch_size: int,
    progress,
    event_table: bool,
    doomed: str = "_audit_stream_doomed",
) -> int:
    """Delete the chosen rows of ``table`` (their keys in the temporary table ``doomed``) in batches."""
    done = 0
    sql = _DELETE_BATCH.format(
        table=connection.ops.quote_name(table), pk=connection.ops.quote_name(pk), doomed=doomed
    )
    while done < total:
        with transaction.atomic(using=connection.alias):
            guard = allow_prune(connection.alias) if event_table else contextlib.nullcontext()
            with guard, connection.cursor() as cursor:
                cursor.execute(sql, {"batch": batch_size})
                deleted = cursor.rowcount
        if deleted == 0 and done < total:
            # Rows chosen but already gone (deleted meanwhile): nothing left to take.
            with connection.cursor() as cursor:
                cursor.execute(f"SELECT count(*) FROM {doomed}")
                if cursor.fetchone()[0] == 0:
                    break
        done += deleted
        if progress:
            progress(table, done, total)
    return done


def _prune_events(connection, model, policy, cutoff, batch_size, dry_run, force, progress) -> tuple[str, int]:
    table = model._meta.db_table
    with connection.cursor() as cursor:
        done, floor, foreign = _checkpoint(cursor, table)
        if foreign and not force:
            raise ValueError(
                "its fold checkpoint was restored from another cluster and is not recovered yet, so what"
                " is folded is unknown: nothing pruned. Let the worker fold (it recovers the checkpoint),"
                " or run fold_all(), then prune again."
            )
        dropped, above = 0, None
        if cutoff is not None and policy.keep_last is None and partitions.is_partitioned(cursor, table):
            parts = partitions.droppable(cursor, table, cutoff, done, floor)
            dropped = _drop_partitions(connection, table, parts, dry_run, progress)
            above = parts[-1].upper if parts else None  # counted above (a dry run leaves them in place)
        sql = _event_candidates(connection, model, policy)
        total = _fill(
            cursor,
            sql,
            {
                "cutoff": cutoff,
                "keep_last": policy.keep_last,
                "force": force,
                "done": done,
                "floor": floor,
                "above": above,
            },
            count_only=dry_run,
        )
    if dry_run:
        return table, dropped + total
    return table, dropped + _drain(connection, table, "pgh_id", total, batch_size, progress, event_table=True)


# Detaching a partition locks the parent table (ACCESS EXCLUSIVE) for as long as
# the statement takes, milliseconds; waiting for that lock would queue every
# writer behind it, so each attempt gives up after a short wait and tries again.
_DETACH_LOCK_TIMEOUT = "100ms"
_DETACH_ATTEMPTS = 50


def _drop_partitions(connection, table: str, parts, dry_run: bool, progress) -> int:
    """Drop whole partitions (retention by partition): their rows counted, then detached and dropped."""
    quote = connection.ops.quote_name
    total = 0
    for part in parts:
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT count(*) FROM {quote(part.name)}")
            rows = cursor.fetchone()[0]
        if not dry_run:
            _detach(connection, table, part.name)
            with transaction.atomic(using=connection.alias), connection.cursor() as cursor:
                cursor.execute(f"DROP TABLE {quote(part.name)}")  # no longer part of the table: no lock on it
        total += rows
        if progress:
            progress(table, total, total)
    return total


def _detach(connection, table: str, name: str) -> None:
    quote = connection.ops.quote_name

    def detach() -> None:
        with transaction.atomic(using=connection.alias), connection.cursor() as cursor:
            cursor.execute(f"SET LOCAL lock_timeout = '{_DETACH_LOCK_TIMEOUT}'")
            cursor.execute(f"ALTER TABLE {quote(table)} DETACH PARTITION {quote(name)}")

    partitions.retry_on_lock_timeout(detach, attempts=_DETACH_ATTEMPTS, what=f"detach {name} from {table}")


# Each object's latest change, which retention keeps whatever the policy
# (_CHANGE_CANDIDATES' `newest > 1`): no later change of the same object.
# Served by the audit_stream_change_prev index (event_table, object_id, event_id).
_LATEST_OF_ITS_OBJECT = """NOT EXISTS (
    SELECT 1 FROM audit_stream_change AS n
    WHERE n.event_table = c.event_table AND n.object_id = c.object_id AND n.model = c.model
      AND n.event_id > c.event_id
)"""

# Taken (for the session) while the oldest partitions of the change feed are
# replaced, and (for its transaction) by erasure: a change erased between the
# copy of the kept changes and the swap would come back.
_CHANGE_PARTITIONS_LOCK = 0x61756469745F63  # "audit_c"


def _drop_change_partitions(
    connection, policy: Policy, cutoff, dry_run: bool, progress
) -> tuple[int, int | None]:
    """Retention by partition for a partitioned change feed: (changes dropped, first id above them).

    The lowest partitions whose changes were all written before ``cutoff``
    (:func:`partitions.aged`) are replaced by one partition holding the
    changes among them that are still the latest of their object
    (:func:`partitions.replace_lowest`): the fold diffs each object's next
    event against it. With ``keep_last`` above 1, nothing is dropped here
    (the batched delete keeps the last N of each object).
    """
    from audit_stream.models import Change

    table = Change._meta.db_table
    if cutoff is None or (policy.keep_last or 1) > 1:
        return 0, None
    with connection.cursor() as cursor:
        if not partitions.is_partitioned(cursor, table):
            return 0, None
        parts = partitions.aged(cursor, table, cutoff)
        if not parts:
            return 0, None
        if dry_run:
            names = [connection.ops.quote_name(part.name) for part in parts]
            counts = " + ".join(
                f"(SELECT count(*) FILTER (WHERE NOT {_LATEST_OF_ITS_OBJECT}) FROM {name} AS c)"
                for name in names
            )
            cursor.execute(f"SELECT {counts}")
            return cursor.fetchone()[0], parts[-1].upper
        layout = partitions.layout_of(Change)
        cursor.execute("SELECT pg_advisory_lock(%s)", [_CHANGE_PARTITIONS_LOCK])
        try:
            dropped, _ = partitions.replace_lowest(
                layout, parts, _LATEST_OF_ITS_OBJECT, using=connection.alias, lock_timeout="100ms"
            )
        finally:
            cursor.execute("SELECT pg_advisory_unlock(%s)", [_CHANGE_PARTITIONS_LOCK])
    if progress:
        progress(table, dropped, dropped)
    return dropped, parts[-1].upper


def _row_log_model():
    from audit_stream.models import RowLog

    return RowLog


def _event_candidates(connection, model, policy: Policy) -> str:
    """The candidates SQL of an event table: ranked per object with ``keep_last``, else by age alone."""
    table = connection.ops.quote_name(model._meta.db_table)
    if policy.keep_last is None:
        return _EVENT_CANDIDATES_BY_AGE.format(table=table)
    obj = _object_key(model)
    rows = (
        f"SELECT * FROM {table} AS e"
        if obj == "NULL::int"  # one object: every event is ranked
        else _CROWDED_EVENTS.format(object=obj, table=table)
    )
    return _EVENT_CANDIDATES.format(table=table, object=obj, rows=rows)


def _object_key(model) -> str:
    """What identifies one object in ``model``'s table (for ``keep_last``)."""
    if model is _row_log_model():
        return "e.logged_table, e.pgh_obj_id"
    return "e.pgh_obj_id" if model._pgh_has_obj else "NULL::int"


def _prune_simple(
    connection,
    table,
    candidates,
    policy,
    cutoff,
    batch_size,
    dry_run,
    progress,
    above=None,
    doomed="_audit_stream_doomed",
) -> tuple[str, int]:
    with connection.cursor() as cursor:
        params = {"cutoff": cutoff, "keep_last": policy.keep_last, "above": above}
        total = _fill(cursor, candidates, params, count_only=dry_run)
    if dry_run:
        return table, total
    return table, _drain(
        connection, table, "id", total, batch_size, progress, event_table=False, doomed=doomed
    )


def _prune_messages(connection, cutoff, batch_size, dry_run, progress) -> tuple[str, int]:
    table = "audit_stream_webhookmessage"
    if cutoff is None:
        return table, 0
    with connection.cursor() as cursor:
        total = _fill(cursor, _MESSAGE_CANDIDATES, {"cutoff": cutoff}, count_only=dry_run)
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


def _prune_contexts(connection, now, batch_size, dry_run) -> int:
    from audit_stream import tracking

    quote = connection.ops.quote_name
    tables = [table for table, model in sorted(tracking._event_models.items()) if model._pgh_has_context]
    # Each table's distinct context ids, hashed once: far fewer than its events
    # (a hash of every event's context id cost most of a dry run at 1M events).
    not_in_events = "".join(
        f" AND NOT EXISTS (SELECT 1 FROM (SELECT DISTINCT pgh_context_id FROM {quote(table)}) AS e"
        " WHERE e.pgh_context_id = ctx.id)"
        for table in [*tables, _row_log_model()._meta.db_table]
    )
    candidates = _CONTEXT_CANDIDATES.format(not_in_events=not_in_events)
    params = {"grace": now - _CONTEXT_GRACE}
    with connection.cursor() as cursor:
        if dry_run:
            with transaction.atomic(using=connection.alias):
                cursor.execute(_CHOOSING_SETTINGS)
                cursor.execute(f"SELECT count(*) FROM ({candidates}) AS candidates", params)
                return cursor.fetchone()[0]
        # updated_at again in the DELETE itself: rechecked on the row's latest version if a
        # writer attached the context meanwhile (see triggers.ATTACH_CONTEXT_FUNCTION).
        cursor.execute(
            f"DELETE FROM audit_stream_context WHERE id IN ({candidates}) AND updated_at < %(grace)s", params
        )
        return cursor.rowcount


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

    from audit_stream import keys, rowlog, tracking
    from audit_stream.models import RetentionRun, RowLog

    try:
        tracked = apps.get_model(model_label)
    except (LookupError, ValueError):
        raise ValueError(f"{model_label!r} is not a model; write it as app_label.ModelName.") from None
    event_models = tracking.event_models_for(tracked)
    logged_as = rowlog.table_names(tracked, using=using)
    if not event_models and not RowLog.objects.using(using).filter(logged_table__in=logged_as).exists():
        raise ValueError(
            f"{tracked._meta.label} is neither tracked nor in the row log: there is nothing to erase."
        )
    for table in [m._meta.db_table for m in event_models] + [RowLog._meta.db_table]:
        if not may_delete(table, using):
            raise PermissionError(f"Cannot erase: {_privilege_error(table)}")
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
    counts: dict[str, int] = {}
    connection = connections[using]
    quote = connection.ops.quote_name
    started = timezone.now()
    with transaction.atomic(using=using), allow_prune(using), connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_CHANGE_PARTITIONS_LOCK])
        cursor.execute(_ERASE_MESSAGES, {"model": tracked._meta.label_lower, "pk": str(pk_value)})
        counts["audit_stream_webhookmessage"] = cursor.rowcount
        cursor.execute(_ERASE_SINK_MESSAGES, {"model": tracked._meta.label_lower, "pk": str(pk_value)})
        counts["audit_stream_sinkmessage"] = cursor.rowcount
        cursor.execute(
            "DELETE FROM audit_stream_change WHERE model = %s AND object_id = %s",
            [tracked._meta.label_lower, str(pk_value)],
        )
        counts["audit_stream_change"] = cursor.rowcount
        for model in event_models:
            if not model._pgh_has_obj:
                continue
            table = model._meta.db_table
            cursor.execute(f"DELETE FROM {quote(table)} WHERE pgh_obj_id = %s", [pk_value])
            counts[table] = cursor.rowcount
        cursor.execute(
            "DELETE FROM audit_stream_row_log WHERE logged_table = ANY(%s) AND pgh_obj_id = %s",
            [logged_as, str(pk_value)],
        )
        counts[RowLog._meta.db_table] = cursor.rowcount
        RetentionRun.objects.using(using).create(
            trigger="erasure",
            rows={tracked._meta.label: counts},
            finished_at=timezone.now(),
            started_at=started,
        )
        if dry_run:
            transaction.set_rollback(True, using=using)
    return counts
