"""Every figure the dashboard shows, each read with a bounded, indexed query.

The pages must stay fast on a database with millions of events and messages,
so nothing here counts a whole big table:

* the backlog of an event table is counted over the events its checkpoint has
  not folded, found through the BRIN index on ``pgh_xid``: exactly up to
  :data:`BACKLOG_EXACT`, estimated from the ``pgh_id`` range beyond;
* per-endpoint queue sizes use the ``(endpoint, status, created_at)`` index:
  exactly up to :data:`QUEUE_CAP`, the planner's estimate beyond ("≈");
* lists are paginated by keyset (``?before=``), never with ``OFFSET``/``COUNT``;
* totals that are only informative come from ``pg_class.reltuples``.

Ages are measured with the database's clock (``clock_timestamp()``), the clock
that wrote the timestamps.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.db import DEFAULT_DB_ALIAS, connections, transaction
from django.db.models import TextField
from django.db.models.functions import Cast
from django.utils import timezone

from audit_stream import config, partitions, rowlog, tracking
from audit_stream.dashboard import formats
from audit_stream.models import Change, Context, LoggedTable, RetentionRun
from audit_stream.stream import heartbeat, lanes, unfolded
from audit_stream.webhooks import filters, tally
from audit_stream.webhooks.models import WebhookAttempt, WebhookEndpoint, WebhookMessage

__all__ = [
    "BACKLOG_EXACT",
    "PAGE_SIZE",
    "QUEUE_CAP",
    "Overview",
    "changes",
    "endpoint_health",
    "estimate_messages",
    "estimate_rows",
    "message_page",
    "overview",
    "reading",
    "retention",
    "stream_tables",
]

#: Unfolded events counted exactly per table, at most; beyond, the backlog is estimated ("≈").
BACKLOG_EXACT = 100_000
#: Messages counted exactly per endpoint and status, at most; beyond, estimated ("≈").
#: Each counted message is a read of its row, scattered over the table (no
#: index answers alone before a vacuum): 10,000 of each status took 0.1-0.5 s
#: per page at 1,000,000 messages.
QUEUE_CAP = 100
#: Rows per page of the message and change lists.
PAGE_SIZE = 50
#: A worker (or beat) is alive if seen this recently; a listener, within 3 poll intervals.
WORKER_ALIVE_SECONDS = 90.0


@contextlib.contextmanager
def reading(using: str = DEFAULT_DB_ALIAS) -> Iterator[None]:
    """Run a page's reads in one transaction, without JIT compilation.

    The dashboard's queries are short, but on big tables the planner's cost
    estimates cross ``jit_above_cost`` and PostgreSQL would spend longer
    compiling them (tens of milliseconds) than running them. ``SET LOCAL``
    ends with the transaction: the connection is left as it was found.
    """
    with transaction.atomic(using=using):
        _rows("SET LOCAL jit = off", using=using)
        yield


def _rows(sql: str, params=None, using: str = DEFAULT_DB_ALIAS) -> list[tuple]:
    with connections[using].cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall() if cursor.description else []


# A partitioned table has no estimate of its own (autovacuum analyses its
# partitions, never the parent): the sum of its analysed partitions'.
_ESTIMATE_ROWS_SQL = """
SELECT CASE WHEN t.relkind <> 'p' THEN t.reltuples
            ELSE (SELECT sum(p.reltuples) FILTER (WHERE p.reltuples >= 0)
                  FROM pg_inherits AS i JOIN pg_class AS p ON p.oid = i.inhrelid
                  WHERE i.inhparent = t.oid)
       END::bigint
FROM pg_class AS t WHERE t.oid = to_regclass(%s)
"""


def estimate_rows(table: str, using: str = DEFAULT_DB_ALIAS) -> int | None:
    """The planner's estimate of a table's rows (``pg_class.reltuples``); ``None`` if never analysed."""
    rows = _rows(_ESTIMATE_ROWS_SQL, [table], using)
    return rows[0][0] if rows and rows[0][0] is not None and rows[0][0] >= 0 else None


# --------------------------------------------------------------------------- the stream


@dataclass
class StreamTable:
    """One event table: what is waiting, for how long, and what has been folded."""

    event_table: str
    model: str
    backlog: int
    backlog_exact: bool  # false: more than BACKLOG_EXACT, estimated
    lag_seconds: float | None  # age of the oldest unfolded event
    folded_total: int  # Checkpoint.folded
    checkpoint_at: datetime | None
    folded_last_hour: int = 0
    folds_last_hour: int = 0
    # Partitioned tables (audit_stream.partitions): rows in the default partition
    # mean partitions were not created ahead (is beat running?).
    rows_in_default_partition: bool = False

    @property
    def backlog_display(self) -> str:
        return formats.count(self.backlog, estimated=not self.backlog_exact)

    @property
    def lag_display(self) -> str:
        return formats.duration(self.lag_seconds)

    def as_dict(self) -> dict:
        return {
            "event_table": self.event_table,
            "model": self.model,
            "backlog": self.backlog,
            "backlog_exact": self.backlog_exact,
            "lag_seconds": self.lag_seconds,
            "folded_total": self.folded_total,
            "checkpoint_updated_at": self.checkpoint_at,
            "folded_last_hour": self.folded_last_hour,
            "folds_last_hour": self.folds_last_hour,
            "rows_in_default_partition": self.rows_in_default_partition,
        }


# Each lane's checkpoint (one per table unless it is folded in lanes: audit_stream.stream.lanes).
_CHECKPOINTS_SQL = (
    "SELECT event_table, snapshot, target, position, folded, updated_at, floor, lane, lanes"
    " FROM audit_stream_checkpoint ORDER BY event_table, lane"
)

# The unfolded events of one event table (audit_stream.stream.unfolded, the
# fold's own definition, counted instead of probed: events up to a restore's
# `floor` are folded), less, while a fold is half-way through an interval, the
# events it has already written (unfolded.WRITTEN).
#
# Each part of the definition is read through the pgh_xid index in xid order,
# so the cost follows the backlog, not the table, and LIMIT caps the work when
# the stream is far behind (the caller then estimates the count). Oldest
# transactions come first, so the oldest creation time and the lowest pgh_id
# stay right in practice.
_BACKLOG_SQL = f"""
SELECT count(*), extract(epoch FROM clock_timestamp() - min(u.pgh_created_at))::float8, min(u.pgh_id)
FROM (
    (SELECT e.pgh_id, e.pgh_created_at FROM {{table}} AS e
     WHERE {unfolded.NEW} AND NOT {unfolded.WRITTEN} AND {{in_lane}}
     ORDER BY e.pgh_xid LIMIT %(cap)s)
    UNION ALL
    (SELECT e.pgh_id, e.pgh_created_at FROM {{table}} AS e
     WHERE {unfolded.IN_PROGRESS} AND NOT {unfolded.WRITTEN} AND {{in_lane}}
     ORDER BY e.pgh_xid LIMIT %(cap)s)
) AS u
"""

# Past the cap: the events from the oldest unfolded one to the newest (the
# primary key's last entry). Ids are drawn in insertion order, so this counts
# the backlog, plus the few events of that range already folded and the ids
# of rolled-back writes.
_LAST_ID_SQL = "SELECT max(pgh_id) FROM {table}"

# Per event table, the events folded in the chart's window (the last 60 minutes).
_FOLDED_BY_TABLE_SQL = """
SELECT event_table, sum(folded)::bigint, count(*)
FROM audit_stream_foldrun
WHERE finished_at >= date_trunc('minute', now()) - interval '59 minutes'
GROUP BY event_table
"""


def stream_tables(using: str = DEFAULT_DB_ALIAS, *, exact_up_to: int | None = None) -> list[StreamTable]:
    """Every event table in the registry, with its backlog, lag and folded totals."""
    cap = exact_up_to or BACKLOG_EXACT
    connection = connections[using]
    checkpoints: dict[str, list] = {}
    for row in _rows(_CHECKPOINTS_SQL, using=using):
        checkpoints.setdefault(row[0], []).append(row[1:])
    last_hour = {row[0]: row[1:] for row in _rows(_FOLDED_BY_TABLE_SQL, using=using)}
    found = []
    with connection.cursor() as cursor:
        tables = {
            table: model.pgh_tracked_model._meta.label_lower
            for table, model in tracking._event_models.items()
        }
        if _row_log_in_use(checkpoints, using):
            tables[rowlog.ROW_LOG_TABLE] = "(row log of initlogging)"
        for table, model_label in sorted(tables.items()):
            # A table never folded has no checkpoint: every event is new.
            lanes_ = checkpoints.get(table, [("1:1:", None, 0, 0, None, 0, 0, 1)])
            quoted = connection.ops.quote_name(table)
            sql = _BACKLOG_SQL.format(table=quoted, in_lane=lanes.in_lane(tracking._event_models.get(table)))
            backlog, lags, firsts, over_cap = 0, [], [], False
            for done, target, position, _, _, floor, lane, count in lanes_:
                params = {"done": done, "target": target, "position": position, "floor": floor}
                cursor.execute(sql, {**params, **lanes.params(lane, count), "cap": cap + 1})
                lane_backlog, lane_lag, lane_first = cursor.fetchone()
                backlog += lane_backlog
                over_cap = over_cap or lane_backlog > cap
                lags += [] if lane_lag is None else [lane_lag]
                firsts += [] if lane_first is None else [lane_first]
            lag, first_id = max(lags, default=None), min(firsts, default=None)
            folded = sum(row[3] for row in lanes_)
            # The checkpoint is as old as its least recently moved lane.
            updated_at = min((row[4] for row in lanes_ if row[4] is not None), default=None)
            exact = backlog <= cap and not over_cap
            if not exact:
                cursor.execute(_LAST_ID_SQL.format(table=quoted))
                backlog = max(backlog, cursor.fetchone()[0] - first_id + 1)
            folded_hour, folds_hour = last_hour.get(table, (0, 0))
            found.append(
                StreamTable(
                    event_table=table,
                    model=model_label,
                    backlog=backlog,
                    backlog_exact=exact,
                    lag_seconds=lag,
                    folded_total=folded,
                    checkpoint_at=updated_at,
                    folded_last_hour=folded_hour,
                    folds_last_hour=folds_hour,
                    rows_in_default_partition=(
                        partitions.is_partitioned(cursor, table) and partitions.default_rows(cursor, table)
                    ),
                )
            )
    return found


@dataclass
class Throughput:
    """Events folded per minute over the last hour, oldest minute first."""

    minutes: list[tuple[datetime, int]]

    @property
    def total(self) -> int:
        return sum(n for _, n in self.minutes)

    @property
    def peak(self) -> int:
        return max((n for _, n in self.minutes), default=0)

    def as_dict(self) -> dict:
        return {
            "total": self.total,
            "peak_per_minute": self.peak,
            "per_minute": [{"minute": minute, "folded": n} for minute, n in self.minutes],
        }


# The chart's window: the last 60 minutes, the current one included, on the
# database's clock.
_WINDOW_SQL = "SELECT date_trunc('minute', now()) - interval '59 minutes'"

# Events folded per minute since the window's start, from FoldRun rows by the
# minute their fold finished: one range of the audit_stream_foldrun_time index.
_THROUGHPUT_SQL = """
SELECT date_trunc('minute', finished_at), sum(folded)::bigint
FROM audit_stream_foldrun
WHERE finished_at >= %(start)s
GROUP BY 1
"""


def throughput(using: str = DEFAULT_DB_ALIAS) -> Throughput:
    """60 (minute, events folded) pairs, oldest first; minutes without a fold are 0."""
    start = _rows(_WINDOW_SQL, using=using)[0][0]
    folded = dict(_rows(_THROUGHPUT_SQL, {"start": start}, using))
    minutes = [start + timedelta(minutes=n) for n in range(60)]
    return Throughput(minutes=[(minute, folded.get(minute, 0)) for minute in minutes])


@dataclass
class Latency:
    """Commit-to-fold latency of the folds of the last hour (FoldRun.lag_ms), in milliseconds."""

    folds: int
    p50: int | None
    p95: int | None
    max: int | None

    def display(self, name: str) -> str:
        ms = getattr(self, name)
        return formats.duration(None if ms is None else ms / 1000)

    @property
    def p50_display(self) -> str:
        return self.display("p50")

    @property
    def p95_display(self) -> str:
        return self.display("p95")

    @property
    def max_display(self) -> str:
        return self.display("max")

    def as_dict(self) -> dict:
        return {"folds": self.folds, "p50_ms": self.p50, "p95_ms": self.p95, "max_ms": self.max}


# Percentiles over fold runs (each run's lag_ms is its oldest event's), as
# values of real runs (percentile_disc), in the chart's window.
_LATENCY_SQL = """
SELECT count(*),
       percentile_disc(0.5) WITHIN GROUP (ORDER BY lag_ms),
       percentile_disc(0.95) WITHIN GROUP (ORDER BY lag_ms),
       max(lag_ms)
FROM audit_stream_foldrun
WHERE finished_at >= date_trunc('minute', now()) - interval '59 minutes'
  AND lag_ms IS NOT NULL
"""


def latency(using: str = DEFAULT_DB_ALIAS) -> Latency:
    return Latency(*_rows(_LATENCY_SQL, using=using)[0])


# --------------------------------------------------------------------------- processes


@dataclass
class Process:
    """A stream process's last heartbeat."""

    name: str
    kind: str
    host: str
    pid: int
    started_at: datetime
    last_seen: datetime
    age_seconds: float
    alive_within: float

    @property
    def alive(self) -> bool:
        return self.age_seconds <= self.alive_within

    @property
    def age_display(self) -> str:
        return formats.duration(self.age_seconds)

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "kind": self.kind,
            "host": self.host,
            "pid": self.pid,
            "started_at": self.started_at,
            "last_seen": self.last_seen,
            "age_seconds": self.age_seconds,
            "alive": self.alive,
        }


def _alive_within(kind: str) -> float:
    """How recent a heartbeat of ``kind`` must be for the process to count as alive."""
    if kind == "listener":
        return 3 * config.poll_interval()  # the active listener beats on every poll
    return WORKER_ALIVE_SECONDS  # workers beat per task; beat through its sweep, every 30 s


# The 50 most recently seen processes, with their age on the database's clock;
# a process silent for longer than `forget` seconds (one of an earlier run) is
# not shown (and the sweep deletes its row).
_PROCESSES_SQL = """
SELECT name, kind, host, pid, started_at, last_seen,
       extract(epoch FROM clock_timestamp() - last_seen)::float8
FROM audit_stream_heartbeat
WHERE last_seen > clock_timestamp() - make_interval(secs => %(forget)s)
ORDER BY last_seen DESC
LIMIT 50
"""


def processes(using: str = DEFAULT_DB_ALIAS) -> list[Process]:
    """The processes heard from within ``heartbeat.FORGET_AFTER``, most recent first."""
    rows = _rows(_PROCESSES_SQL, {"forget": heartbeat.FORGET_AFTER}, using=using)
    return [Process(*row, alive_within=_alive_within(row[1])) for row in rows]


@dataclass
class OpenTransaction:
    """A backend of this database in a transaction that has written (it holds an xid)."""

    pid: int
    age_seconds: float
    state: str | None
    query: str | None
    application_name: str
    xact_start: datetime
    user: str | None

    @property
    def age_display(self) -> str:
        return formats.duration(self.age_seconds)

    def as_dict(self) -> dict:
        return {
            "pid": self.pid,
            "age_seconds": self.age_seconds,
            "state": self.state,
            "query": self.query,
            "application_name": self.application_name,
            "xact_start": self.xact_start,
            "user": self.user,
        }


# The oldest transaction that holds an xid in this database: until it ends,
# its events cannot be folded, and every checkpoint snapshot keeps it as xmin.
# The dashboard's own backend is left out. The query text is visible only to
# superusers and pg_read_all_stats members ("<insufficient privilege>" else).
_OLDEST_TRANSACTION_SQL = """
SELECT pid, extract(epoch FROM clock_timestamp() - xact_start)::float8, state,
       left(query, 300), application_name, xact_start, usename::text
FROM pg_stat_activity
WHERE datname = current_database()
  AND backend_xid IS NOT NULL
  AND pid <> pg_backend_pid()
ORDER BY xact_start
LIMIT 1
"""


def oldest_transaction(using: str = DEFAULT_DB_ALIAS) -> OpenTransaction | None:
    # Activity statistics are a snapshot taken once per transaction: in a
    # request inside a transaction (ATOMIC_REQUESTS), start from a fresh one.
    _rows("SELECT pg_stat_clear_snapshot()", using=using)
    rows = _rows(_OLDEST_TRANSACTION_SQL, using=using)
    return OpenTransaction(*rows[0]) if rows else None


def retention_runs(limit: int = 10) -> list[RetentionRun]:
    """The latest retention runs (index audit_stream_retention_time), each with ``took_display``."""
    runs = list(RetentionRun.objects.order_by("-started_at", "-id")[:limit])
    for run in runs:
        took = (run.finished_at - run.started_at).total_seconds() if run.finished_at else None
        run.took_display = formats.duration(took) if took is not None else None
    return runs


def retention_run_dict(run: RetentionRun) -> dict:
    return {
        "id": run.id,
        "started_at": run.started_at,
        "finished_at": run.finished_at,
        "trigger": run.trigger,
        "dry_run": run.dry_run,
        "rows": run.rows,
        "errors": run.errors,
    }


@dataclass
class Overview:
    """Everything on the overview page (and in ``api/overview.json``)."""

    tables: list[StreamTable]
    throughput: Throughput
    latency: Latency
    processes: list[Process]
    retention_runs: list[RetentionRun]
    oldest_transaction: OpenTransaction | None
    generated_at: datetime = field(default_factory=timezone.now)

    @property
    def backlog_display(self) -> str:
        """Unfolded events over every table."""
        return formats.count(
            sum(t.backlog for t in self.tables), estimated=not all(t.backlog_exact for t in self.tables)
        )

    @property
    def lag_seconds(self) -> float | None:
        """The largest lag of any table."""
        return max((t.lag_seconds for t in self.tables if t.lag_seconds is not None), default=None)

    @property
    def lag_display(self) -> str:
        return formats.duration(self.lag_seconds)

    @property
    def beat(self) -> Process | None:
        """Celery beat (its heartbeat comes with the sweep it schedules every 30 s)."""
        return next((p for p in self.processes if p.kind == "beat"), None)

    def as_dict(self) -> dict:
        beat = self.beat
        return {
            "generated_at": self.generated_at,
            "tables": [t.as_dict() for t in self.tables],
            "throughput": self.throughput.as_dict(),
            "latency": self.latency.as_dict(),
            "processes": [p.as_dict() for p in self.processes],
            "beat": {
                "last_seen": beat.last_seen if beat else None,
                "alive": beat.alive if beat else False,
                "retention_runs": [retention_run_dict(run) for run in self.retention_runs],
            },
            "oldest_transaction": self.oldest_transaction.as_dict() if self.oldest_transaction else None,
        }


def overview(using: str = DEFAULT_DB_ALIAS) -> Overview:
    return Overview(
        tables=stream_tables(using),
        throughput=throughput(using),
        latency=latency(using),
        processes=processes(using),
        retention_runs=retention_runs(limit=5),
        oldest_transaction=oldest_transaction(using),
    )


# --------------------------------------------------------------------------- webhooks


@dataclass
class EndpointHealth:
    """One endpoint: its delivery record over 24 hours and its queue."""

    endpoint: WebhookEndpoint
    attempts_24h: int = 0
    succeeded_24h: int = 0
    last_error: str = ""
    last_error_at: datetime | None = None
    pending: int = 0
    sending: int = 0
    dead: int = 0
    oldest_pending_at: datetime | None = None
    estimated: set[str] = field(default_factory=set)  # the statuses past QUEUE_CAP, estimated

    @property
    def oldest_pending_age(self) -> str:
        return age(self.oldest_pending_at)

    @property
    def last_error_age(self) -> str:
        return age(self.last_error_at)

    @property
    def success_rate(self) -> float | None:
        return self.succeeded_24h / self.attempts_24h if self.attempts_24h else None

    @property
    def success_rate_display(self) -> str:
        return formats.percent(self.success_rate)

    @property
    def pending_display(self) -> str:
        return _queue_size(self.pending, "pending" in self.estimated)

    @property
    def sending_display(self) -> str:
        return _queue_size(self.sending, "sending" in self.estimated)

    @property
    def dead_display(self) -> str:
        return _queue_size(self.dead, "dead" in self.estimated)

    @property
    def health(self) -> str:
        """``disabled``, ``failing`` (a failure streak), ``degraded`` (under 95% in 24 h) or ``ok``."""
        if not self.endpoint.is_active:
            return "disabled"
        if self.endpoint.consecutive_failures:
            return "failing"
        rate = self.success_rate
        return "degraded" if rate is not None and rate < 0.95 else "ok"


def capped(number: int) -> str:
    """A queue size counted up to QUEUE_CAP: ``"10,000+"`` when it reached it."""
    return formats.count(number) + ("+" if number >= QUEUE_CAP else "")


def _queue_size(number: int, estimated: bool) -> str:
    """A queue size: exact, or ``"≈12,345"`` when it was past QUEUE_CAP and estimated."""
    return ("≈" if estimated else "") + formats.count(number)


# The planner's estimate of one endpoint's messages of one status: a branch per
# pair in one EXPLAIN (planned, never run). With the statistics of endpoint and
# status together (migration 0026), each pair has its own frequency.
_ESTIMATE_BRANCH_SQL = (
    "SELECT 1 FROM audit_stream_webhookmessage AS m WHERE m.endpoint_id = %s AND m.status = %s"
)


def estimate_messages(pairs: list[tuple[int, str]], using: str = DEFAULT_DB_ALIAS) -> list[int]:
    """The planner's estimates of the messages of ``pairs`` (endpoint id, status), in order; one query."""
    if not pairs:
        return []
    sql = " UNION ALL ".join([_ESTIMATE_BRANCH_SQL] * len(pairs))
    # A parallel Append reorders its branches (by cost): only a plain one keeps the pairs' order.
    with transaction.atomic(using=using):
        _rows("SET LOCAL max_parallel_workers_per_gather = 0", using=using)
        plan = _rows("EXPLAIN (FORMAT JSON) " + sql, [v for pair in pairs for v in pair], using)[0][0]
    plan = (json.loads(plan) if isinstance(plan, str) else plan)[0]["Plan"]
    branches = plan["Plans"] if len(pairs) > 1 else [plan]
    if len(branches) != len(pairs):
        raise RuntimeError(f"EXPLAIN gave {len(branches)} estimates for {len(pairs)} queues: {plan}")
    return [int(branch["Plan Rows"]) for branch in branches]


def age(when: datetime | None) -> str:
    return formats.duration((timezone.now() - when).total_seconds()) if when else "—"


# Attempts of the last 24 hours per endpoint come from the counts kept per
# hour as attempts are recorded (audit_stream.webhooks.tally): 24 rows per
# endpoint, never the attempts themselves.
_ATTEMPTS_24H_SQL = tally.LAST_24_HOURS_SQL

# Each endpoint's (or sink's) queue: messages per status, each count capped,
# and the oldest pending one. Every subquery is a range of the messages'
# (owner, status, created_at) index.
_QUEUE_TEMPLATE = """
SELECT o.id,
       (SELECT count(*) FROM (SELECT 1 FROM {messages} AS m
                              WHERE m.{owner} = o.id AND m.status = %(pending)s
                              LIMIT %(cap)s) AS s),
       (SELECT count(*) FROM (SELECT 1 FROM {messages} AS m
                              WHERE m.{owner} = o.id AND m.status = %(sending)s
                              LIMIT %(cap)s) AS s),
       (SELECT count(*) FROM (SELECT 1 FROM {messages} AS m
                              WHERE m.{owner} = o.id AND m.status = %(dead)s
                              LIMIT %(cap)s) AS s),
       (SELECT min(m.created_at) FROM {messages} AS m
        WHERE m.{owner} = o.id AND m.status = %(pending)s)
FROM {owners} AS o
WHERE %(owner_id)s::bigint IS NULL OR o.id = %(owner_id)s::bigint
"""


def queue_sql(messages: str, owner: str, owners: str) -> str:
    """The queue query over the message table ``messages``, whose column ``owner`` points into ``owners``.

    Parameters: ``owner_id`` (one owner, or ``None`` for all), ``cap``, and the
    ``pending``, ``sending`` and ``dead`` statuses. Rows: id, pending, sending,
    dead, oldest pending message's time.
    """
    return _QUEUE_TEMPLATE.format(messages=messages, owner=owner, owners=owners)


_QUEUE_SQL = queue_sql("audit_stream_webhookmessage", "endpoint_id", "audit_stream_webhookendpoint")


def endpoint_health(endpoint_id: int | None = None, using: str = DEFAULT_DB_ALIAS) -> list[EndpointHealth]:
    """Every endpoint (or one), oldest first, with its 24-hour record and its queue."""
    endpoints = WebhookEndpoint.objects.using(using).order_by("id")
    if endpoint_id is not None:
        endpoints = endpoints.filter(pk=endpoint_id)
    found = {endpoint.pk: EndpointHealth(endpoint) for endpoint in endpoints}
    params = {"endpoint": endpoint_id}
    for pk, attempts, succeeded, last_error, last_error_at in _rows(_ATTEMPTS_24H_SQL, params, using):
        if pk in found:
            health = found[pk]
            health.attempts_24h, health.succeeded_24h = attempts, succeeded
            health.last_error, health.last_error_at = last_error or "", last_error_at
    params.update(
        owner_id=endpoint_id,
        cap=QUEUE_CAP,
        pending=WebhookMessage.PENDING,
        sending=WebhookMessage.SENDING,
        dead=WebhookMessage.DEAD,
    )
    capped = []
    for pk, pending, sending, dead, oldest in _rows(_QUEUE_SQL, params, using):
        if pk in found:
            health = found[pk]
            health.pending, health.sending, health.dead, health.oldest_pending_at = (
                pending,
                sending,
                dead,
                oldest,
            )
            sizes = {"pending": pending, "sending": sending, "dead": dead}
            capped += [(pk, status) for status, size in sizes.items() if size >= QUEUE_CAP]
    for (pk, status), estimate in zip(capped, estimate_messages(capped, using), strict=True):
        setattr(found[pk], status, max(estimate, QUEUE_CAP))
        found[pk].estimated.add(status)
    return list(found.values())


@dataclass
class Page:
    """One page of a keyset-paginated list, newest first."""

    items: list
    older: str | None  # the ?before= cursor of the next (older) page, if there is one
    is_first: bool


# One branch per status asked for: the newest messages of one endpoint and
# status, an ordered range of the (endpoint, status, created_at) index. The
# branches are merged and cut to one page. A keyset cursor (created_at, id)
# continues after the last row of the previous page, without OFFSET. The
# payload is not read: the list does not show it.
_MESSAGE_BRANCH_SQL = """
(SELECT id, endpoint_id, change_id, event_type, status, attempts, next_attempt_at,
        lease_until, last_error, created_at, delivered_at
 FROM audit_stream_webhookmessage
 WHERE endpoint_id = %(endpoint)s AND status = %({status})s{conditions}
 ORDER BY created_at DESC, id DESC
 LIMIT %(limit)s)
"""
_MESSAGE_CONDITIONS = {
    "since": " AND created_at >= %(since)s",
    "until": " AND created_at < %(until)s",
    # The first test lets the index bound the range; the row comparison is exact.
    "before": " AND created_at <= %(before_at)s AND (created_at, id) < (%(before_at)s, %(before_id)s)",
}


def encode_cursor(created_at: datetime, pk: uuid.UUID) -> str:
    return f"{created_at.isoformat()}~{pk.hex}"


def decode_cursor(cursor: str | None) -> tuple[datetime, uuid.UUID] | None:
    """``(created_at, id)`` from a ``?before=`` value; ``None`` if absent or malformed."""
    if not cursor:
        return None
    created, _, pk = cursor.partition("~")
    try:
        when = datetime.fromisoformat(created)
        return (when if timezone.is_aware(when) else timezone.make_aware(when)), uuid.UUID(pk)
    except ValueError:
        return None


def message_page(
    endpoint_id: int,
    *,
    statuses: list[str] | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    before: str | None = None,
    limit: int | None = None,
    using: str = DEFAULT_DB_ALIAS,
) -> Page:
    """The messages of one endpoint, newest first, optionally by status and creation time."""
    limit = limit or PAGE_SIZE
    statuses = statuses or [status for status, _ in WebhookMessage.STATUSES]
    params: dict = {"endpoint": endpoint_id, "limit": limit + 1, "since": since, "until": until}
    conditions = "".join(_MESSAGE_CONDITIONS[name] for name in ("since", "until") if params[name])
    cursor = decode_cursor(before)
    if cursor:
        params["before_at"], params["before_id"] = cursor
        conditions += _MESSAGE_CONDITIONS["before"]
    branches = []
    for index, status in enumerate(statuses):
        params[f"status_{index}"] = status
        branches.append(_MESSAGE_BRANCH_SQL.format(status=f"status_{index}", conditions=conditions))
    sql = (
        f"SELECT * FROM ({' UNION ALL '.join(branches)}) AS m"
        " ORDER BY created_at DESC, id DESC LIMIT %(limit)s"
    )
    items = list(WebhookMessage.objects.using(using).raw(sql, params))
    older = encode_cursor(items[limit - 1].created_at, items[limit - 1].id) if len(items) > limit else None
    return Page(items=items[:limit], older=older, is_first=cursor is None)


def attempts(message: WebhookMessage, limit: int = 100) -> list[WebhookAttempt]:
    """A message's attempts, newest first (index on message_id)."""
    return list(message.attempt_log.order_by("-attempted_at", "-id")[:limit])


# --------------------------------------------------------------------------- retention


@dataclass
class Retention:
    """The policies in force, the last runs, and when beat runs next."""

    policies: list[dict] | None  # None: retention.describe_policies() is not available
    policy_error: str
    runs: list[RetentionRun]
    interval_seconds: float | None
    last_beat_run: RetentionRun | None

    @property
    def next_run_at(self) -> datetime | None:
        if self.interval_seconds is None or self.last_beat_run is None:
            return None
        return self.last_beat_run.started_at + timedelta(seconds=self.interval_seconds)

    @property
    def interval_display(self) -> str:
        return formats.duration(self.interval_seconds)


def retention(limit: int = 20) -> Retention:
    """What :mod:`audit_stream.retention` says is in force, and what it did."""
    from audit_stream import retention as retention_module

    describe = getattr(retention_module, "describe_policies", None)
    policies, error = None, ""
    if describe is not None:
        try:
            policies = [
                {**policy, "max_age_display": formats.age(policy.get("max_age"))} for policy in describe()
            ]
        except ValueError as exc:  # a bad setting (the system checks say so too)
            error = str(exc)
    interval = getattr(config, "retention_interval", None)
    return Retention(
        policies=policies,
        policy_error=error,
        runs=retention_runs(limit),
        interval_seconds=interval() if interval else None,
        last_beat_run=RetentionRun.objects.filter(trigger="beat").order_by("-started_at", "-id").first(),
    )


# --------------------------------------------------------------------------- changes


def tracked_models() -> list[str]:
    """``"app_label.model"`` of every tracked or logged model, as ``Change.model`` stores it."""
    return filters.known_models()


def event_labels() -> list[str]:
    """Every event label declared on a tracked model (and the row log's, when logging is on)."""
    return filters.known_labels()


def _row_log_in_use(checkpoints: dict, using: str) -> bool:
    """Whether to show the row log: logging is on, or it has been folded."""
    return rowlog.ROW_LOG_TABLE in checkpoints or LoggedTable.objects.using(using).exists()


#: Above this many contexts for one user, the change list filters with a subquery instead.
USER_CONTEXTS_INLINE = 50_000


def _by_user(queryset, user: object, using: str):
    """``queryset.by_user(user)``, with the user's contexts looked up first.

    Given a subquery, the planner guesses how many contexts match and tends to
    walk the whole change feed backwards looking for them; given the list of
    ids it knows, and uses the ``context`` index when they are few.
    """
    pk = getattr(user, "pk", user)
    ids = list(
        Context.objects.using(using)
        .filter(metadata__user=pk)
        .values_list("id", flat=True)[: USER_CONTEXTS_INLINE + 1]
    )
    if len(ids) > USER_CONTEXTS_INLINE:
        return queryset.by_user(user)
    return queryset.filter(context_id__in=ids)


def changes(
    *,
    model: str = "",
    object_id: str = "",
    label: str = "",
    user: object = None,
    before: int | None = None,
    limit: int | None = None,
    visible: list[str] | None = None,
    using: str = DEFAULT_DB_ALIAS,
) -> Page:
    """The change feed, newest first (by ``id``), filtered, one keyset page.

    ``visible``: only changes of these models (``None``: every model), the ones
    the viewer may see (:func:`audit_stream.dashboard.access.visible_models`).

    An object id without a model is looked up in every tracked model, so the
    ``(model, object_id, event_id)`` index still serves it. Each change carries
    ``diff_text``, its diff as PostgreSQL prints it (numbers exact); the
    snapshot is not read.
    """
    limit = limit or PAGE_SIZE
    queryset = (
        Change.objects.using(using)
        .select_related("context")
        .defer("diff", "snapshot")
        .annotate(diff_text=Cast("diff", TextField()))
        .order_by("-id")
    )
    if user not in (None, ""):
        queryset = _by_user(queryset, user, using)
    if model:
        queryset = queryset.for_model(model)
    if object_id:
        queryset = queryset.filter(object_id=object_id)
        if not model:
            queryset = queryset.filter(model__in=tracked_models())
    if label:
        queryset = queryset.filter(label=label)
    if visible is not None:
        queryset = queryset.filter(model__in=visible)
    if before is not None:
        queryset = queryset.filter(id__lt=before)
    items = list(queryset[: limit + 1])
    older = str(items[limit - 1].id) if len(items) > limit else None
    return Page(items=items[:limit], older=older, is_first=before is None)
