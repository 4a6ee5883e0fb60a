"""RabbitMQ: a topic exchange, one routing key per object, publisher confirms.

Target: an AMQP URL (``amqp://guest:guest@127.0.0.1:5672/``). Options:
``exchange`` (default ``audit_stream``, a durable topic exchange, declared when
missing); ``queue``: when set, a durable stream queue (``x-queue-type: stream``)
of that name is declared and bound to every routing key. A change of
``shop.product`` 42 has the routing key ``shop.product.42``: bind
``shop.product.*`` for one model. Messages are persistent, carry ``message_id``
and the headers; RabbitMQ does not de-duplicate, so a re-sent batch carries the
same message ids.
"""

from __future__ import annotations

import asyncio

import aio_pika
from aio_pika.exceptions import AMQPError

from audit_stream.sinks.base import AsyncSink, BrokerError, Message, object_token

__all__ = ["RabbitMQSink"]


class RabbitMQSink(AsyncSink):
    """Publishes to a topic exchange with publisher confirms, a batch's confirms awaited together."""

    _connection = None
    _exchange = None

    @staticmethod
    def routing_key(message: Message) -> str:
        return f"{message.model}.{object_token(message.object_id)}"

    def open(self) -> None:
        self._run(self._open())

    async def _open(self) -> None:
        try:
            self._connection = await aio_pika.connect(self.target, timeout=5, fail_fast=True)
        except (TimeoutError, OSError, AMQPError) as exc:
            raise BrokerError(f"RabbitMQ at {self.target}: {exc or type(exc).__name__}") from exc
        channel = await self._connection.channel(publisher_confirms=True)
        self._exchange = await channel.declare_exchange(
            self.options.get("exchange", "audit_stream"), aio_pika.ExchangeType.TOPIC, durable=True
        )
        if self.options.get("queue"):
            queue = await channel.declare_queue(
                self.options["queue"], durable=True, arguments={"x-queue-type": "stream"}
            )
            await queue.bind(self._exchange, routing_key="#")

    def publish_batch(self, messages: list[Message]) -> list[str | None]:
        return self._run(self._publish(messages))

    async def _publish(self, messages: list[Message]) -> list[str | None]:
        if self._exchange is None or self._connection.is_closed:
            raise BrokerError("RabbitMQ connection is closed")
        results = await asyncio.gather(
            *(
                self._exchange.publish(
                    aio_pika.Message(
                        m.body,
                        content_type="application/json",
                        message_id=m.id,
                        type=m.event_type,
                        headers=m.headers(),
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    ),
                    routing_key=self.routing_key(m),
                    timeout=10,
                )
                for m in messages
            ),
            return_exceptions=True,
        )
        if self._connection.is_closed or all(isinstance(r, Exception) for r in results):
            first = next((r for r in results if isinstance(r, Exception)), None)
            raise BrokerError(f"RabbitMQ publish failed: {first!r}")
        return [f"{type(r).__name__}: {r}" if isinstance(r, Exception) else None for r in results]

    def close(self) -> None:
        try:
            if self._connection is not None and not self._connection.is_closed:
                self._run(self._connection.close())
        except Exception:  # closing a broken connection: nothing left to release
            pass
        finally:
            self._connection = self._exchange = None
            self._close_loop()
