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
import json

import nats
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js.errors import NotFoundError

from audit_stream.sinks.base import AsyncSink, BrokerError, Message, object_token

__all__ = ["NatsSink"]


def _ack_error(ack: Msg | None) -> str | None:
    """``None`` for JetStream's acknowledgement (``{"stream": .., "seq": ..}``), else what went wrong."""
    if ack is None:
        return "TimeoutError: no acknowledgement within 10 s"
    if b'"seq"' in ack.data and b'"error"' not in ack.data:
        return None  # stored, or a duplicate it dropped ("duplicate": true)
    if not ack.data and ack.headers and ack.headers.get("Status"):  # e.g. 503: no stream for the subject
        return f"NATS status {ack.headers['Status']}: {ack.headers.get('Description', '')}".strip()
    try:
        error = json.loads(ack.data).get("error", {})
    except ValueError:
        error = {}
    return f"JetStream error {error.get('code', '')}: {error.get('description', ack.data[:200])}"


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
        # Every message goes out with its own reply subject under one inbox, and one
        # subscription collects JetStream's acknowledgements: nats-py's publish_async
        # (a future, a semaphore and a timer per message) cost more than the publish.
        inbox = self._nc.new_inbox()
        acks: dict[int, Msg] = {}
        all_acked = asyncio.Event()

        async def collect(ack: Msg) -> None:
            acks[int(ack.subject.rpartition(".")[2])] = ack
            if len(acks) == len(messages):
                all_acked.set()

        try:
            subscription = await self._nc.subscribe(f"{inbox}.*", cb=collect)
            try:
                for i, m in enumerate(messages):
                    await self._nc.publish(
                        self.subject(m),
                        m.body,
                        reply=f"{inbox}.{i}",
                        headers={"Nats-Msg-Id": m.id, **m.headers()},
                    )
                await self._nc.flush(timeout=10)
                await asyncio.wait_for(all_acked.wait(), timeout=10)
            except TimeoutError:
                pass  # those not acknowledged are retried (and de-duplicated by Nats-Msg-Id)
            finally:
                if not self._nc.is_closed:
                    await subscription.unsubscribe()
        except (OSError, NatsError) as exc:
            raise BrokerError(f"NATS publish failed: {exc!r}") from exc
        results = [_ack_error(acks.get(i)) for i in range(len(messages))]
        if self._nc.is_closed or all(r is not None for r in results):
            raise BrokerError(f"NATS publish failed: {results[0]}")
        return results

    def close(self) -> None:
        try:
            if self._nc is not None and not self._nc.is_closed:
                self._run(self._nc.close())
        finally:
            self._nc = self._js = None
            self._close_loop()
