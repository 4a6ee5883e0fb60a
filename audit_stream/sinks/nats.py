"""NATS JetStream: one subject per object, ``Nats-Msg-Id`` for the broker's de-duplication.

Target: a server URL (``nats://127.0.0.1:4222``). Options: ``stream`` (default
``AUDIT_STREAM``), created when missing with the subjects ``<prefix>.>``;
``subject_prefix`` (default ``audit_stream``). A change of ``shop.product`` 42 is
published on ``audit_stream.shop.product.42``: a consumer reads one model with
``audit_stream.shop.product.*``, one object with the full subject. JetStream drops
a message whose ``Nats-Msg-Id`` it saw within its duplicate window (2 min by
default), so a batch re-sent after a lost acknowledgement is not stored twice.
"""

from __future__ import annotations

import asyncio

import nats
from nats.errors import Error as NatsError
from nats.js.errors import NotFoundError

from audit_stream.sinks.base import AsyncSink, BrokerError, Message, object_token

__all__ = ["NatsSink"]


async def _ignore(error: Exception) -> None:
    """nats-py's error callback: errors surface as exceptions of the calls instead."""


class NatsSink(AsyncSink):
    """Publishes to a JetStream stream, every message of a batch in flight at once."""

    _nc = None
    _js = None

    @property
    def prefix(self) -> str:
        return self.options.get("subject_prefix", "audit_stream")

    def subject(self, message: Message) -> str:
        return f"{self.prefix}.{message.model}.{object_token(message.object_id)}"

    def open(self) -> None:
        self._run(self._open())

    async def _open(self) -> None:
        try:
            # One attempt (with 0 attempts nats-py retries a refused connection forever);
            # the errors become BrokerError, not log noise from nats-py's default callback.
            self._nc = await nats.connect(
                self.target,
                connect_timeout=5,
                max_reconnect_attempts=1,
                reconnect_time_wait=0.1,
                allow_reconnect=False,
                error_cb=_ignore,
            )
        except (TimeoutError, OSError, NatsError) as exc:
            raise BrokerError(f"NATS at {self.target}: {exc or type(exc).__name__}") from exc
        self._js = self._nc.jetstream(timeout=10)
        stream = self.options.get("stream", "AUDIT_STREAM")
        try:
            try:
                await self._js.stream_info(stream)
            except NotFoundError:
                await self._js.add_stream(name=stream, subjects=[f"{self.prefix}.>"])
        except (TimeoutError, NatsError) as exc:
            raise BrokerError(f"JetStream stream {stream!r} at {self.target}: {exc!r}") from exc

    def publish_batch(self, messages: list[Message]) -> list[str | None]:
        return self._run(self._publish(messages))

    async def _publish(self, messages: list[Message]) -> list[str | None]:
        if self._js is None or self._nc.is_closed:
            raise BrokerError("NATS connection is closed")
        # publish_async: every message goes out with a reply inbox, acknowledgements are
        # collected as they come back (one flush, not a request/reply per message).
        futures = []
        for m in messages:
            futures.append(
                await self._js.publish_async(
                    self.subject(m), m.body, headers={"Nats-Msg-Id": m.id, **m.headers()}
                )
            )
        await self._nc.flush(timeout=10)
        done, _ = await asyncio.wait(futures, timeout=10)
        results = [
            (f.exception() or None) if f in done else TimeoutError("no acknowledgement within 10 s")
            for f in futures
        ]
        for f in futures:
            f.cancel()  # those still waiting: their messages are retried (and de-duplicated)
        if self._nc.is_closed or all(isinstance(r, Exception) for r in results):
            first = next((r for r in results if isinstance(r, Exception)), None)
            raise BrokerError(f"NATS publish failed: {first!r}")
        return [f"{type(r).__name__}: {r}" if isinstance(r, Exception) else None for r in results]

    def close(self) -> None:
        try:
            if self._nc is not None and not self._nc.is_closed:
                self._run(self._nc.close())
        finally:
            self._nc = self._js = None
            self._close_loop()
