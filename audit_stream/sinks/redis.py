"""Redis Streams: ``XADD`` with ``MAXLEN``, a batch in one pipeline.

Target: a Redis URL (``redis://127.0.0.1:6379/0``). Options: ``stream_prefix``
(default ``audit_stream``): one stream per model, ``audit_stream:shop.product``;
``maxlen`` (default 1,000,000, approximate trimming). Each entry has the fields
``id`` (message id), ``event_id``, ``type``, ``object_id`` (read one object by
filtering on it) and ``payload`` (the webhook JSON). Redis cannot de-duplicate:
a batch re-sent after a lost reply adds entries again, with the same ``id``.
"""

from __future__ import annotations

import redis

from audit_stream.sinks.base import BrokerError, Message, Sink

__all__ = ["RedisSink"]


def _bulk(value: bytes) -> bytes:
    """One argument of a command in the Redis protocol (RESP): ``$<length>\\r\\n<bytes>\\r\\n``."""
    return b"$%d\r\n%s\r\n" % (len(value), value)


class RedisSink(Sink):
    """Appends to one stream per model, every message of a batch in one round trip.

    The commands are written in the Redis protocol here rather than through
    redis-py's pipeline, whose generic encoding of each argument cost twice the
    rest of a batch (34 µs a message against 13 µs, without hiredis).
    """

    _client: redis.Redis | None = None

    def stream(self, message: Message) -> str:
        return f"{self.options.get('stream_prefix', 'audit_stream')}:{message.model}"

    def open(self) -> None:
        self._client = redis.Redis.from_url(self.target, socket_connect_timeout=5, socket_timeout=10)

    def _xadd(self, message: Message, maxlen: bytes) -> bytes:
        args = (
            b"XADD", self.stream(message).encode(), b"MAXLEN", b"~", maxlen, b"*",
            b"id", message.id.encode(),
            b"event_id", b"%d" % message.event_id,
            b"type", message.event_type.encode(),
            b"object_id", message.object_id.encode(),
            b"payload", message.body,
        )  # fmt: skip
        return b"*%d\r\n" % len(args) + b"".join(map(_bulk, args))

    def publish_batch(self, messages: list[Message]) -> list[str | None]:
        maxlen = b"%d" % int(self.options.get("maxlen", 1_000_000))
        commands = b"".join(self._xadd(m, maxlen) for m in messages)
        pool = self._client.connection_pool
        try:
            conn = pool.get_connection()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise BrokerError(f"Redis at {self.target}: {exc}") from exc
        results: list[str | None] = []
        try:
            conn.send_packed_command([commands])
            for _ in messages:
                try:
                    conn.read_response()
                    results.append(None)
                except redis.ResponseError as exc:  # this entry refused (e.g. a wrong key type)
                    results.append(f"{type(exc).__name__}: {exc}")
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            conn.disconnect()  # replies may be left unread on it: never reuse it
            raise BrokerError(f"Redis at {self.target}: {exc}") from exc
        finally:
            pool.release(conn)
        return results

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
