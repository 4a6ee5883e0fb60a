"""At most one pending task per unit of work (a fold of a table, a delivery to an endpoint), in Redis.

Whoever enqueues claims ``audit_stream:<task>:<key>`` first. A fold
releases it when it starts, so that work arriving during a run enqueues the
next one (a second fold of the same lane backs off at its checkpoint's lock).
A delivery holds it while it runs (:func:`held`), releases it when it ends,
then enqueues the next run if anything is due: one delivery task queued or
running per endpoint or sink (``audit_stream.tasks``). The key expires, so a
task lost with a Redis restart never blocks its unit for long: the listener's
poll enqueues it again. A running delivery keeps its mark on a short expiry
that a thread of its own renews, so a worker killed mid-delivery holds up its
endpoint for seconds, not for the mark's whole expiry.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
from collections.abc import Iterator

import redis

from audit_stream import config

_PREFIX = "audit_stream:"

logger = logging.getLogger("audit_stream.stream")

#: Seconds a running task's mark outlives the last renewal (what a killed worker holds its unit up for).
HELD_TTL = 10.0
#: Seconds between renewals of a running task's mark.
HELD_RENEW = 2.0


@functools.cache
def _client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)


def _ttl() -> int:
    return max(30, int(10 * config.poll_interval()))


def _name(task: str, key: object) -> str:
    """The Redis key of the mark of ``task`` for ``key``."""
    return f"{_PREFIX}{task}:{key}"


def key(*args: object) -> str:
    """The unit of work of a task's arguments: ``"42"``, ``"shop_orderevent"``, or a lane of a table,
    ``"shop_orderevent:2"``."""
    return ":".join(str(arg) for arg in args)


def claim(task: str, key: object) -> bool:
    """Mark ``task`` for ``key`` as pending; ``False`` if it already is."""
    return bool(_client(config.redis_url()).set(_name(task, key), "1", nx=True, ex=_ttl()))


def release(task: str, key: object) -> None:
    """Forget the pending ``task`` for ``key`` (it has started, or could not be sent)."""
    _client(config.redis_url()).delete(_name(task, key))


@contextlib.contextmanager
def held(task: str, key: object) -> Iterator[None]:
    """Hold the mark of ``task`` for ``key`` while the block runs, then release it.

    The mark is set with an expiry of :data:`HELD_TTL`, renewed every
    :data:`HELD_RENEW` seconds by a thread, so it lasts as long as the block
    while the process lives (a slow receiver included), and expires within
    :data:`HELD_TTL` of the process dying. With Redis unreachable the block
    still runs, unmarked.
    """
    client, name = _client(config.redis_url()), _name(task, key)
    stop = threading.Event()

    def mark() -> None:
        try:
            client.set(name, "1", px=int(HELD_TTL * 1000))
        except redis.RedisError as exc:
            logger.warning("could not mark %s(%s) as running: %s", task, key, exc)

    def renew() -> None:
        while not stop.wait(HELD_RENEW):
            mark()

    mark()
    renewer = threading.Thread(target=renew, name="audit_stream-mark", daemon=True)
    renewer.start()
    try:
        yield
    finally:
        stop.set()
        renewer.join()
        try:
            client.delete(name)
        except redis.RedisError as exc:
            logger.warning("could not release the mark of %s(%s): %s", task, key, exc)
