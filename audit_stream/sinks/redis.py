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


class RedisSink(Sink):
    """Appends to one stream per model, every message of a batch in one round trip."""

    _client: redis.Redis | None = None

    def stream(self, message: Message) -> str:
        return f"{self.options.get('stream_prefix', 'audit_stream')}:{message.model}"

    def open(self) -> None:
        self._client = redis.Redis.from_url(self.target, socket_connect_timeout=5, socket_timeout=10)

    def publish_batch(self, messages: list[Message]) -> list[str | None]:
        maxlen = int(self.options.get("maxlen", 1_000_000))
        pipe = self._client.pipeline(transaction=False)
        for m in messages:
            fields = {
                "id": m.id,
                "event_id": m.event_id,
                "type": m.event_type,
                "object_id": m.object_id,
                "payload": m.body,
            }
            pipe.xadd(self.stream(m), fields, maxlen=maxlen, approximate=True)
        try:
            results = pipe.execute(raise_on_error=False)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise BrokerError(f"Redis at {self.target}: {exc}") from exc
        return [f"{type(r).__name__}: {r}" if isinstance(r, Exception) else None for r in results]

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
