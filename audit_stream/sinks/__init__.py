"""Sinks: the change feed delivered to a message broker (NATS JetStream, Redis Streams, RabbitMQ).

A :class:`~audit_stream.sinks.models.Sink` is declared like a webhook endpoint;
the fold records a :class:`~audit_stream.sinks.models.SinkMessage` per matching
change in its own transaction, and :mod:`audit_stream.sinks.delivery` publishes
them in pipelined batches through the backend module of the sink's kind.
"""
