"""At most one pending fold per event table, kept in Redis.

The listener claims ``audit_stream:fold:<table>`` before it enqueues a fold;
the fold task releases it when it starts, so changes committed during a fold
can enqueue the next one. The key expires, so a task lost with a Redis
restart never blocks a table for long: the listener's poll enqueues it again.
"""

from __future__ import annotations

import functools

import redis

from audit_stream import config

_PREFIX = "audit_stream:fold:"


@functools.cache
def _client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)


def _ttl() -> int:
    return max(30, int(10 * config.poll_interval()))


def claim(event_table: str) -> bool:
    """Mark a fold of ``event_table`` as pending; ``False`` if one already is."""
    return bool(_client(config.redis_url()).set(_PREFIX + event_table, "1", nx=True, ex=_ttl()))


def release(event_table: str) -> None:
    """Forget the pending fold of ``event_table`` (its task has started, or failed to be sent)."""
    _client(config.redis_url()).delete(_PREFIX + event_table)
