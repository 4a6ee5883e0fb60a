"""Heartbeats: each stream process says it is alive, for the dashboard."""

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


def params(kind: str, info: str = "{}") -> dict:
    host = socket.gethostname()
    pid = os.getpid()
    return {"name": f"{kind}@{host}:{pid}", "kind": kind, "host": host, "pid": pid, "info": info}


def beat(kind: str, info: str = "{}") -> None:
    """Record that this process (of ``kind``) is alive, through Django's connection."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(BEAT_SQL, params(kind, info))
