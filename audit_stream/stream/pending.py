"""At most one pending task per unit of work (a fold of a table, a delivery to an endpoint), in Redis.

Whoever enqueues claims ``audit_stream:<task>:<key>`` first. A fold
releases it when it starts, so that work arriving during a run enqueues the
next one (a second fold of the same lane backs off at its checkpoint's lock).
A delivery releases it when it ends, then enqueues the next run if anything
is due: one delivery task queued or running per endpoint or sink
(``audit_stream.tasks``). The key expires, so a task lost with a Redis restart
never blocks its unit for long: the listener's poll enqueues it again.
"""

from __future__ import annotations

import functools

import redis

from audit_stream import config

_PREFIX = "audit_stream:"


@functools.cache
def _client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)


def _ttl() -> int:
    return max(30, int(10 * config.poll_interval()))


def key(*args: object) -> str:
    """The unit of work of a task's arguments: ``"42"``, ``"shop_orderevent"``, or a lane of a table,
    ``"shop_orderevent:2"``."""
    return ":".join(str(arg) for arg in args)


def claim(task: str, key: object) -> bool:
    """Mark ``task`` for ``key`` as pending; ``False`` if it already is."""
    return bool(_client(config.redis_url()).set(f"{_PREFIX}{task}:{key}", "1", nx=True, ex=_ttl()))


def release(task: str, key: object) -> None:
    """Forget the pending ``task`` for ``key`` (it has started, or could not be sent)."""
    _client(config.redis_url()).delete(f"{_PREFIX}{task}:{key}")
