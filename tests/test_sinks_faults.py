"""Sinks when the broker is down: retried with backoff, delivered when it is back, dead after the schedule.

A test that stops a broker runs its own ``redis-server``, ``nats-server -js``
(:class:`tests.sink_servers.PrivateServer`) or RabbitMQ node
(:class:`tests.sink_servers.PrivateRabbitMQ`). A worker killed mid-batch is
killed (SIGKILL) once the broker holds the batch and before its
acknowledgements reach it (a frozen Redis, or a proxy that withholds the
broker's replies: :class:`tests.sink_servers.AckWithholdingProxy`).
"""

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import aio_pika
import pytest
import redis
from django.db import connection
from nats.js.errors import NotFoundError

from audit_stream.models import Sink, SinkMessage
from audit_stream.sinks import delivery
from audit_stream.stream import fold
from tests.procs import ROOT, child_env, wait_until
from tests.sink_servers import (
    AMQP_URL,
    NATS_URL,
    AckWithholdingProxy,
    PrivateRabbitMQ,
    PrivateServer,
    free_port,
    unique,
)
from tests.test_sinks import (  # noqa: F401 (rabbitmq_sink: a fixture)
    _amqp_bind,
    _amqp_cleanup,
    _amqp_get,
    _nats,
    nats_messages,
    rabbitmq_sink,
)
from tests.testapp.models import Product

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.faults]


@pytest.fixture(autouse=True)
def _settings(settings):
    settings.AUDIT_STREAM = {"SINK_RETRY_SCHEDULE": [0, 0.2, 0.2]}


@pytest.fixture
def servers(tmp_path):
    started = []

    def make(kind, **options):
        server = PrivateServer(kind, tmp_path, **options)
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


def _statuses():
    return sorted(SinkMessage.objects.values_list("status", flat=True))


def _held_elsewhere() -> bool:
    """Another session holds a claimed batch: idle in the transaction whose last statement claimed it."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE datname = current_database()"
            " AND pid <> pg_backend_pid() AND state = 'idle in transaction'"
            " AND query LIKE '%%FROM audit_stream_sinkmessage AS m%%')"  # its start: the text is cut at 1 kB
        )
        return cursor.fetchone()[0]


def _deliver_until_delivered(sink, count):
    """Run deliveries (as the sweep would) until ``count`` messages are delivered."""

    def done():
        delivery.deliver(sink.pk)
        return SinkMessage.objects.filter(status="delivered").count() == count

    wait_until(done, timeout=20, interval=0.1, message=f"{count} messages delivered")


def _outage_mid_publish(sink, n: int, stop, start, what: str) -> None:
    """Deliver ``sink``'s ``n`` messages in batches of 10 on a thread (as the sweep would), ``stop`` the
    broker once a batch is delivered, ``start`` it once a batch has failed, and wait until all n are."""
    failed, done = [], threading.Event()

    def worker():
        try:
            while not done.is_set():
                failed.append(delivery.deliver(sink.pk, batch_size=10).failed)
                done.wait(0.02)
        finally:
            connection.close()

    thread = threading.Thread(target=worker)
    thread.start()
    try:
        wait_until(
            lambda: SinkMessage.objects.filter(status="delivered").exists(), timeout=30, message="a batch"
        )
        stop()
        assert SinkMessage.objects.filter(status="delivered").count() < n  # stopped mid-publish
        wait_until(lambda: sum(failed) > 0, timeout=30, message=f"a batch failed while {what} was down")
        start()
        wait_until(
            lambda: SinkMessage.objects.filter(status="delivered").count() == n,
            timeout=120, interval=0.2, message="every message delivered",
        )  # fmt: skip
    finally:
        done.set()
        thread.join(timeout=60)


def test_redis_down_is_retried_then_delivered_when_it_is_back(servers):
    """A refused connection fails the batch (attempt and error kept); once Redis is up, it is delivered."""
    server = servers("redis")
    sink = Sink.objects.create(name="r", kind="redis", target=server.url)
    Product.objects.bulk_create([Product(name=f"p{i}") for i in range(5)])
    fold.fold_all()

    result = delivery.deliver(sink.pk)
    assert (result.delivered, result.failed, result.dead) == (0, 5, 0)
    assert _statuses() == ["pending"] * 5
    message = SinkMessage.objects.first()
    assert message.attempts == 1 and "Redis" in message.last_error
    assert message.next_attempt_at > message.created_at

    server.start()
    _deliver_until_delivered(sink, 5)
    entries = redis.Redis.from_url(server.url).xrange("audit_stream:testapp.product")
    assert sorted(fields[b"id"].decode() for _, fields in entries) == sorted(
        m.message_id for m in SinkMessage.objects.all()
    )


def test_nats_down_is_retried_then_delivered_when_it_is_back(servers):
    """JetStream unreachable: retried; once it is up, the stream is created and holds each message once."""
    server = servers("nats")
    sink = Sink.objects.create(name="n", kind="nats", target=server.url, options={"stream": "AUDIT"})
    Product.objects.bulk_create([Product(name=f"p{i}") for i in range(5)])
    fold.fold_all()

    assert delivery.deliver(sink.pk).failed == 5
    assert _statuses() == ["pending"] * 5

    server.start()
    _deliver_until_delivered(sink, 5)
    stored = nats_messages("AUDIT", server.url)
    assert sorted(m.headers["Nats-Msg-Id"] for m in stored) == sorted(
        m.message_id for m in SinkMessage.objects.all()
    )


def test_nats_restarted_keeps_its_store_and_drops_a_resent_batch(servers):
    """Messages survive a restart (the store is kept); the same batch re-sent is not stored twice."""
    server = servers("nats")
    server.start()
    sink = Sink.objects.create(name="n", kind="nats", target=server.url, options={"stream": "AUDIT"})
    Product.objects.bulk_create([Product(name=f"p{i}") for i in range(5)])
    fold.fold_all()
    assert delivery.deliver(sink.pk).delivered == 5

    server.stop()
    server.start()
    SinkMessage.objects.update(status="pending")  # as if every acknowledgement had been lost
    assert delivery.deliver(sink.pk).delivered == 5
    stored = nats_messages("AUDIT", server.url)
    assert len(stored) == 5
    assert {json.loads(m.data)["data"]["object_id"] for m in stored} == {
        str(pk) for pk in Product.objects.values_list("pk", flat=True)
    }


@pytest.mark.parametrize("kind", ["redis", "nats"])
def test_a_broker_restarted_mid_publish_loses_nothing_and_duplicates_only_with_the_same_ids(
    kind, servers, settings
):
    """Redis (its data kept on disk) or NATS (its JetStream store kept) stopped while batches go out, then
    started again: every message delivered; JetStream stores each once (Nats-Msg-Id), Redis Streams may
    hold a batch whose replies were lost twice, each copy with its message's id."""
    settings.AUDIT_STREAM = {"SINK_RETRY_SCHEDULE": [0] + [0.3] * 200}  # never dead during the outage
    server = servers(kind, durable=True)
    server.start()
    options = {"stream": "AUDIT"} if kind == "nats" else {}
    sink = Sink.objects.create(name=kind, kind=kind, target=server.url, options=options)
    n = 1000
    Product.objects.bulk_create([Product(name=f"p{i}") for i in range(n)])
    fold.fold_all()
    _outage_mid_publish(sink, n, server.stop, server.start, kind)
    if kind == "nats":
        ids = Counter(m.headers["Nats-Msg-Id"] for m in nats_messages("AUDIT", server.url))
        assert sum(ids.values()) == n  # de-duplicated by the broker
    else:
        entries = redis.Redis.from_url(server.url).xrange("audit_stream:testapp.product")
        ids = Counter(fields[b"id"].decode() for _, fields in entries)
        assert sum(ids.values()) >= n
    assert set(ids) == {m.message_id for m in SinkMessage.objects.all()}  # nothing lost


def test_a_message_is_dead_after_the_schedule_and_replay_delivers_it(servers):
    """Every attempt of the schedule failed: dead. Replay makes it due again with a fresh schedule."""
    server = servers("redis")
    sink = Sink.objects.create(name="r", kind="redis", target=server.url)
    Product.objects.create(name="lamp")
    fold.fold_all()

    def dead():
        delivery.deliver(sink.pk)
        return _statuses() == ["dead"]

    wait_until(dead, timeout=10, interval=0.05, message="the message dead")
    assert SinkMessage.objects.get().attempts == 3

    server.start()
    assert delivery.deliver(sink.pk).delivered == 0  # dead messages are not retried by themselves
    assert delivery.replay(sink.pk) == 1
    assert delivery.deliver(sink.pk).delivered == 1
    assert _statuses() == ["delivered"]
    assert redis.Redis.from_url(server.url).xlen("audit_stream:testapp.product") == 1


def _unread_bytes(port: int) -> int:
    """Bytes received by the server listening on ``port`` and not yet read (``/proc/net/tcp``: rx_queue)."""
    total = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == port and fields[3] == "01":  # ESTABLISHED
            total += int(fields[4].split(":")[1], 16)
    return total


_DELIVER_IN_CHILD = """
import sys, django
django.setup()
from audit_stream.sinks import delivery
delivery.deliver(int(sys.argv[1]))
"""


def test_a_worker_killed_mid_batch_loses_nothing_and_resends_with_the_same_ids(servers):
    """kill -9 while Redis holds the batch unanswered: rolled back, the batch is sent again, same ids."""
    server = servers("redis")
    server.start()
    sink = Sink.objects.create(name="r", kind="redis", target=server.url)
    Product.objects.bulk_create([Product(name=f"p{i}") for i in range(50)])
    fold.fold_all()

    os.kill(server.pid, signal.SIGSTOP)  # the publish is written, its reply never comes
    try:
        child = subprocess.Popen(
            [sys.executable, "-c", _DELIVER_IN_CHILD, str(sink.pk)], cwd=ROOT, env=child_env()
        )
        wait_until(_held_elsewhere, timeout=20, message="the batch claimed")
        wait_until(lambda: _unread_bytes(server.port), timeout=20, message="the batch written to Redis")
        child.kill()
        child.wait(timeout=10)
    finally:
        os.kill(server.pid, signal.SIGCONT)
    # No lease to wait for: the killed worker's transaction is rolled back, its batch due at once.
    wait_until(lambda: not _held_elsewhere(), timeout=20, message="the killed worker's batch given back")
    assert _statuses() == ["pending"] * 50

    _deliver_until_delivered(sink, 50)
    ids = [
        f[b"id"].decode() for _, f in redis.Redis.from_url(server.url).xrange("audit_stream:testapp.product")
    ]
    assert set(ids) == {m.message_id for m in SinkMessage.objects.all()}
    assert len(ids) in (50, 100)  # the killed batch reached Redis or not; a duplicate carries the same id


def test_rabbitmq_unreachable_is_retried_then_delivered(rabbitmq_sink):  # noqa: F811 (the fixture)
    """A refused AMQP connection fails the batch onto its schedule; reachable again, it is delivered."""
    reachable = rabbitmq_sink.target
    Sink.objects.filter(pk=rabbitmq_sink.pk).update(target=f"amqp://guest:guest@127.0.0.1:{free_port()}/")
    product = Product.objects.create(name="lamp")
    fold.fold_all()

    assert delivery.deliver(rabbitmq_sink.pk).failed == 1
    message = SinkMessage.objects.get()
    assert (message.status, message.attempts) == ("pending", 1) and "RabbitMQ" in message.last_error

    Sink.objects.filter(pk=rabbitmq_sink.pk).update(target=reachable)  # the broker is back
    _deliver_until_delivered(rabbitmq_sink, 1)
    (received,) = asyncio.run(_amqp_get(rabbitmq_sink.queue))
    assert received.routing_key == f"testapp.product.{product.pk}"
    assert received.message_id == message.message_id


def _deliver_in_child(sink) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", _DELIVER_IN_CHILD, str(sink.pk)], cwd=ROOT, env=child_env()
    )


def _kill(child: subprocess.Popen) -> None:
    child.kill()  # SIGKILL: no cleanup; PostgreSQL rolls its transaction back, and the batch is due again
    child.wait(timeout=10)
    wait_until(lambda: not _held_elsewhere(), timeout=20, message="the killed worker's batch given back")


def test_a_worker_killed_mid_batch_on_jetstream_loses_nothing_and_the_resent_batch_is_dropped():
    """kill -9 once JetStream stored the batch, before its acks came back: stored once (Nats-Msg-Id)."""
    stream, prefix = unique("I20K"), unique("i20k")
    proxy = AckWithholdingProxy(4222, publish_marker=b"HPUB ")  # the acks of the publishes never arrive
    sink = Sink.objects.create(
        name=prefix, kind="nats", target=f"nats://127.0.0.1:{proxy.port}",
        options={"stream": stream, "subject_prefix": prefix},
    )  # fmt: skip
    try:
        Product.objects.bulk_create([Product(name=f"p{i}") for i in range(50)])
        fold.fold_all()
        child = _deliver_in_child(sink)
        wait_until(lambda: _nats_stored(stream) == 50, timeout=30, message="the batch stored by JetStream")
        assert _statuses() == ["pending"] * 50 and _held_elsewhere()  # published, not recorded
        _kill(child)
        proxy.close()
        Sink.objects.filter(pk=sink.pk).update(target=NATS_URL)

        _deliver_until_delivered(sink, 50)
        stored = nats_messages(stream)
        assert sorted(m.headers["Nats-Msg-Id"] for m in stored) == sorted(
            m.message_id for m in SinkMessage.objects.all()
        )  # each once: the re-sent batch was dropped as duplicates
    finally:
        proxy.close()
        asyncio.run(_nats(lambda js: js.delete_stream(stream)))


def _nats_stored(stream: str) -> int:
    async def count(js):
        try:
            return (await js.stream_info(stream)).state.messages
        except NotFoundError:
            return 0

    return asyncio.run(_nats(count))


async def _amqp_ready(queue: str, url: str = AMQP_URL) -> int:
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        return (await channel.declare_queue(queue, passive=True)).declaration_result.message_count


def test_a_worker_killed_mid_batch_on_rabbitmq_loses_nothing_and_resends_with_the_same_ids():
    """kill -9 once RabbitMQ queued the batch, before its confirms came back: sent again, same ids."""
    exchange, queue = unique("i20k"), unique("i20k-")
    asyncio.run(_amqp_bind(exchange, queue, "#"))
    proxy = AckWithholdingProxy(5672, publish_marker=b"\x00\x3c\x00\x28")  # a basic.publish method frame
    sink = Sink.objects.create(
        name=exchange, kind="rabbitmq", target=f"amqp://guest:guest@127.0.0.1:{proxy.port}/",
        options={"exchange": exchange},
    )  # fmt: skip
    try:
        Product.objects.bulk_create([Product(name=f"p{i}") for i in range(50)])
        fold.fold_all()
        child = _deliver_in_child(sink)
        wait_until(lambda: asyncio.run(_amqp_ready(queue)) == 50, timeout=30, message="the batch queued")
        assert _statuses() == ["pending"] * 50 and _held_elsewhere()  # published, not recorded
        _kill(child)
        proxy.close()
        Sink.objects.filter(pk=sink.pk).update(target=AMQP_URL)

        _deliver_until_delivered(sink, 50)
        ids = Counter(m.message_id for m in asyncio.run(_amqp_get(queue)))
        # RabbitMQ cannot de-duplicate: every message of the killed batch twice, with its one id.
        assert ids == {m.message_id: 2 for m in SinkMessage.objects.all()}
    finally:
        proxy.close()
        asyncio.run(_amqp_cleanup(exchange, queue))


@pytest.fixture(scope="module")
def rabbitmq_node(tmp_path_factory):
    """A RabbitMQ node of this module's own (about 10 s to start), which its tests stop and start."""
    node = PrivateRabbitMQ(tmp_path_factory.mktemp("rabbitmq"))
    try:
        node.start()
        yield node
    finally:  # also when it failed to start: a node left running would outlive its directory
        node.stop()


def test_rabbitmq_stopped_mid_publish_loses_nothing_and_resends_with_the_same_ids(rabbitmq_node, settings):
    """`rabbitmqctl stop_app` while batches go out, `start_app` later: every message delivered, same ids."""
    settings.AUDIT_STREAM = {"SINK_RETRY_SCHEDULE": [0] + [0.3] * 200}  # never dead during the outage
    exchange, queue = unique("i20s"), unique("i20s-")
    asyncio.run(_amqp_bind(exchange, queue, "#", url=rabbitmq_node.url))
    sink = Sink.objects.create(
        name=exchange, kind="rabbitmq", target=rabbitmq_node.url, options={"exchange": exchange}
    )
    n = 4000
    Product.objects.bulk_create([Product(name=f"p{i}") for i in range(n)])
    fold.fold_all()
    _outage_mid_publish(sink, n, rabbitmq_node.stop_app, rabbitmq_node.start_app, "RabbitMQ")
    ids = Counter(m.message_id for m in asyncio.run(_amqp_get(queue, url=rabbitmq_node.url)))
    assert set(ids) == {m.message_id for m in SinkMessage.objects.all()}  # nothing lost
    assert sum(ids.values()) >= n  # a batch whose confirms were lost is in the queue twice, same ids
