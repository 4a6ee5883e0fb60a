"""The stream's processes (from their heartbeats), and the oldest open transaction, which holds folds back."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.db import DEFAULT_DB_ALIAS

from audit_stream import config
from audit_stream.dashboard import formats
from audit_stream.dashboard.reading import rows
from audit_stream.stream import heartbeat

__all__ = ["WORKER_ALIVE_SECONDS", "OpenTransaction", "Process", "oldest_transaction", "processes"]

#: A worker (or beat) is alive if seen this recently; a listener, within 3 poll intervals.
WORKER_ALIVE_SECONDS = 90.0


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
    found = rows(_PROCESSES_SQL, {"forget": heartbeat.FORGET_AFTER}, using=using)
    return [Process(*row, alive_within=_alive_within(row[1])) for row in found]


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
    rows("SELECT pg_stat_clear_snapshot()", using=using)
    found = rows(_OLDEST_TRANSACTION_SQL, using=using)
    return OpenTransaction(*found[0]) if found else None
