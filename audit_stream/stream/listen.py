"""The listener: turns NOTIFY wake-ups (and a timer) into fold tasks.

One dedicated autocommit psycopg connection LISTENs on the channel. Only one
listener is active at a time: it holds a session advisory lock on that
connection; others stand by and take over when the lock is released (the
process stops or its connection dies).

NOTIFY is only a wake-up. The listener also polls every ``POLL_INTERVAL``
for tables with unfolded events, so a missed notification, a lost task or a
Redis restart costs at most one interval. It reconnects with backoff when
PostgreSQL goes away and stops within half a second of :meth:`Listener.stop`.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import sql

from audit_stream import beat, config, tracking
from audit_stream.sinks.delivery import SWEEP_DUE_SINKS_SQL
from audit_stream.stream import heartbeat, pending, wakeup
from audit_stream.webhooks.delivery import DUE_ENDPOINTS_SQL, SWEEP_DUE_ENDPOINTS_SQL

__all__ = ["Listener", "run"]

logger = logging.getLogger("audit_stream.listener")

APPLICATION_NAME = "audit_stream listener"

# Session advisory lock held by the active listener ("audit_stream" in ASCII).
LEADER_LOCK = 0x61756469745F73


class Listener:
    """Wake the fold when events are committed.

    Args:
        connect_kwargs: Keyword arguments for :func:`psycopg.connect`.
        enqueue: Sends a task with its arguments: ``enqueue("audit_stream.fold", table)``,
            ``enqueue("audit_stream.fold", table, lane)`` (one lane of a table folded in
            several, :mod:`audit_stream.stream.lanes`) or ``enqueue("audit_stream.deliver", endpoint_id)``.
    """

    def __init__(self, connect_kwargs: dict[str, Any], enqueue: Callable[..., Any]) -> None:
        self.connect_kwargs = {k: v for k, v in connect_kwargs.items() if k != "cursor_factory"}
        # Named, so operators (and the dashboard) can find it in pg_stat_activity.
        self.connect_kwargs["application_name"] = APPLICATION_NAME
        self.enqueue_task = enqueue
        self.channel = config.channel()
        self.poll_interval = config.poll_interval()
        self.notify = config.notify()
        self.tables = set(tracking.stream_tables())
        self._stop = threading.Event()
        self.is_leader = False
        self._floors_checked = float("-inf")  # when the endpoints' floors were last checked (monotonic)

    def stop(self, *args: Any) -> None:
        """Ask the loop to finish (safe from a signal handler)."""
        self._stop.set()

    def run(self) -> None:
        """Serve until :meth:`stop`, reconnecting with backoff."""
        backoff = 0.5
        while not self._stop.is_set():
            try:
                with psycopg.connect(autocommit=True, **self.connect_kwargs) as conn:
                    backoff = 0.5
                    self._serve(conn)
            except psycopg.Error as exc:
                # Connection lost, server restarting, or not migrated yet.
                self.is_leader = False
                logger.warning("listener: %s: %s; retrying in %.1fs", type(exc).__name__, exc, backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)
        logger.info("listener: stopped")

    def _serve(self, conn: psycopg.Connection) -> None:
        while not self._stop.is_set():
            if conn.execute("SELECT pg_try_advisory_lock(%s)", [LEADER_LOCK]).fetchone()[0]:
                break
            logger.info("listener: another listener is active; standing by")
            self._stop.wait(self.poll_interval)
        else:
            return
        self.is_leader = True
        conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
        logger.info("listener: active on channel %r (notify=%s)", self.channel, self.notify)
        if not self.notify:
            conn.execute(wakeup.DISARM_SQL)

        next_poll = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= next_poll:
                self._poll(conn)
                next_poll = now + self.poll_interval
            timeout = max(0.0, min(0.5, next_poll - time.monotonic()))
            # notifies() holds the connection until it returns: query afterwards.
            if any(True for _ in conn.notifies(timeout=timeout, stop_after=1)):
                self._poll(conn)  # one flag wakes us for every table: look at all

    def _poll(self, conn: psycopg.Connection) -> None:
        """Enqueue what is due: folds of tables with unfolded events, deliveries of due messages."""
        with conn.cursor() as cursor:
            cursor.execute(heartbeat.BEAT_SQL, heartbeat.params("listener", '{"leader": true}'))
            # One task per lane with work (a table folded in one lane: one task for the table).
            busy = [(t, lane) for t in sorted(self.tables) for lane in wakeup._lanes_with_work(cursor, t)]
            for table, lane in busy:
                self._enqueue("audit_stream.fold", table, *([] if lane is None else [lane]))
            if not busy and self.notify:
                cursor.execute(wakeup.ARM_SQL)  # all caught up: the next writer wakes us
            # From each endpoint's floor, as the claims read; every SWEEP_INTERVAL from no floor,
            # the floors lowered to what became owed below them (audit_stream.ordering), as the
            # sweep does: a deployment whose beat does not run loses nothing either.
            # Sinks (whose deliveries the fold enqueues) are checked then only: their retries and
            # what became owed below their floors.
            sweeping = time.monotonic() - self._floors_checked >= beat.SWEEP_INTERVAL
            if sweeping:
                self._floors_checked = time.monotonic()
            cursor.execute(SWEEP_DUE_ENDPOINTS_SQL if sweeping else DUE_ENDPOINTS_SQL)
            for (endpoint_id,) in cursor.fetchall():
                self._enqueue("audit_stream.deliver", endpoint_id)
            if sweeping:
                cursor.execute(SWEEP_DUE_SINKS_SQL)
                for (sink_id,) in cursor.fetchall():
                    self._enqueue("audit_stream.deliver_sink", sink_id)

    def _enqueue(self, task: str, *args: Any) -> None:
        key = pending.key(*args)
        try:
            if pending.claim(task, key):
                try:
                    self.enqueue_task(task, *args)
                except Exception:
                    pending.release(task, key)
                    raise
        except Exception as exc:  # Redis or the broker is down: the next poll retries
            logger.warning("listener: could not enqueue %s(%s): %s", task, key, exc)


def run(send_task: Callable[..., Any]) -> None:
    """Run the listener until SIGTERM or SIGINT (the body of ``manage.py audit_stream listen``).

    Args:
        send_task: Sends a Celery task by name, e.g. your Celery app's
            ``app.send_task``; called as ``send_task("audit_stream.fold", args=[table])``
            (``args=[table, lane]`` for a lane of a table folded in several).
    """
    from django.db import connections

    params = connections[config.listen_database()].get_connection_params()
    listener = Listener(params, enqueue=lambda task, *args: send_task(task, args=list(args)))
    signal.signal(signal.SIGTERM, listener.stop)
    signal.signal(signal.SIGINT, listener.stop)
    listener.run()
