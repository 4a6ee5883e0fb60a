"""Heartbeats: each stream process says it is alive, for the dashboard.

One row per process (``kind@host:pid``). Celery beat does not run tasks: the
tasks it schedules (the sweep, retention) run in workers, so beat's heartbeat
is recorded by them in beat's name, from the header beat puts on every task it
sends (:data:`BEAT_HEADER`): one ``beat@host:pid`` row, whichever worker ran
the task. Rows silent for :data:`FORGET_AFTER` are deleted by the sweep, so
processes of earlier runs do not linger on the dashboard.
"""

from __future__ import annotations

import os
import socket

# Upsert one process's heartbeat. A plain statement: it runs on the listener's
# own psycopg connection as well as through Django.
BEAT_SQL = """
INSERT INTO audit_stream_heartbeat (name, kind, host, pid, started_at, last_seen, info)
VALUES (%(name)s, %(kind)s, %(host)s, %(pid)s, now(), now(), %(info)s::jsonb)
ON CONFLICT (name) DO UPDATE SET last_seen = now(), info = EXCLUDED.info
"""


#: Seconds after which a silent process is forgotten (its row deleted, off the dashboard).
FORGET_AFTER = 3600.0

#: The task header in which Celery beat names itself ("host:pid").
BEAT_HEADER = "audit_stream_beat"

_FORGET_SQL = "DELETE FROM audit_stream_heartbeat WHERE last_seen < now() - make_interval(secs => %s)"


def params(kind: str, info: str = "{}", *, host: str | None = None, pid: int | None = None) -> dict:
    """The heartbeat of this process, or of the process ``host``/``pid`` when given."""
    host = host or socket.gethostname()
    pid = pid or os.getpid()
    return {"name": f"{kind}@{host}:{pid}", "kind": kind, "host": host, "pid": pid, "info": info}


def beat(kind: str, info: str = "{}", *, host: str | None = None, pid: int | None = None) -> None:
    """Record that this process (of ``kind``), or ``host``/``pid``, is alive, through Django's connection."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(BEAT_SQL, params(kind, info, host=host, pid=pid))


def beat_identity() -> str:
    """``host:pid`` of this process, as beat sends it in :data:`BEAT_HEADER`."""
    return f"{socket.gethostname()}:{os.getpid()}"


def beat_for_scheduler(identity: str | None) -> None:
    """Record beat's heartbeat from the ``host:pid`` it sent with a task (nothing if it sent none)."""
    host, _, pid = (identity or "").rpartition(":")
    if host and pid.isdigit():
        beat("beat", host=host, pid=int(pid))


def forget(older_than: float = FORGET_AFTER) -> int:
    """Delete the heartbeats of processes silent for ``older_than`` seconds. Returns how many."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(_FORGET_SQL, [older_than])
        return cursor.rowcount
