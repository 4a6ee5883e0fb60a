"""The interface every sink backend implements, and the registry of kinds.

A backend is one module exposing a :class:`Sink` subclass; adding Kafka, SQS or
Pub/Sub later is one module and one line in :data:`KINDS`.
"""

from __future__ import annotations

import asyncio
import importlib
import re
from dataclasses import dataclass
from typing import Any

__all__ = ["KINDS", "BrokerError", "Message", "Sink", "for_kind", "object_token"]

# kind -> "module:Class", imported only when a sink of that kind is used, so the
# broker clients stay optional (extras audit-stream[nats], [redis], [rabbitmq]).
KINDS: dict[str, str] = {
    "nats": "audit_stream.sinks.nats:NatsSink",
    "redis": "audit_stream.sinks.redis:RedisSink",
    "rabbitmq": "audit_stream.sinks.rabbitmq:RabbitMQSink",
}

MESSAGE_ID_HEADER = "audit-stream-message-id"
EVENT_ID_HEADER = "audit-stream-event-id"
TYPE_HEADER = "audit-stream-type"


class BrokerError(Exception):
    """The broker could not be reached or refused the whole batch: retry later."""


@dataclass(frozen=True)
class Message:
    """One message to publish: the webhook payload (JSON text) and what routes and identifies it."""

    id: str  # "msg_<hex>", stable across retries and replays
    event_id: int
    event_type: str  # "<app>.<model>.<label>"
    model: str  # "app_label.model"
    object_id: str
    body: bytes

    def headers(self) -> dict[str, str]:
        return {
            MESSAGE_ID_HEADER: self.id,
            EVENT_ID_HEADER: str(self.event_id),
            TYPE_HEADER: self.event_type,
        }


_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def object_token(value: str) -> str:
    """``value`` made safe as one token of a subject or routing key (``.``, spaces, ``*``, ``>``: ``_``)."""
    return _UNSAFE.sub("_", value) or "_"


class Sink:
    """A connection to one broker target. Use as a context manager, or call :meth:`open`/:meth:`close`.

    ``publish_batch`` sends every message of the batch pipelined (not one round
    trip each) and returns, per message and in order, ``None`` when the broker
    acknowledged it or the error text when it refused that message. A failure
    that loses the whole batch (connection refused or lost) raises
    :class:`BrokerError`.
    """

    def __init__(self, target: str, options: dict[str, Any] | None = None) -> None:
        self.target = target
        self.options = dict(options or {})

    def open(self) -> None:
        raise NotImplementedError

    def publish_batch(self, messages: list[Message]) -> list[str | None]:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Sink:
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AsyncSink(Sink):
    """A sink whose client is asyncio-based: runs it on a private event loop, from synchronous code."""

    _loop: asyncio.AbstractEventLoop | None = None

    def _run(self, coroutine):
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        return self._loop.run_until_complete(coroutine)

    def _close_loop(self) -> None:
        if self._loop is not None:
            self._loop.close()
            self._loop = None


def for_kind(kind: str, target: str, options: dict[str, Any] | None = None) -> Sink:
    """A (not yet open) sink of ``kind``; says which extra to install when its client is missing."""
    try:
        path = KINDS[kind]
    except KeyError:
        raise ValueError(f"Unknown sink kind {kind!r}; choose one of: {', '.join(sorted(KINDS))}.") from None
    module_name, class_name = path.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ImportError(f"{exc}; install it with: pip install 'audit-stream[{kind}]'") from exc
    return getattr(module, class_name)(target, options)
