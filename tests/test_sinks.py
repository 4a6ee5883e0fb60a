"""Sinks against the real brokers of this machine: a write becomes a message with the webhook payload."""

import asyncio
import json
import threading

import aio_pika
import nats
import pytest
import redis
from django.core.management import CommandError, call_command
from django.db import connection, transaction
from prometheus_client.parser import text_string_to_metric_families

import audit_stream
from audit_stream import tasks
from audit_stream.dashboard import metrics
from audit_stream.models import Sink, SinkMessage, WebhookEndpoint, WebhookMessage
from audit_stream.sinks import delivery
from audit_stream.stream import fold
from tests.sink_servers import AMQP_URL, NATS_URL, REDIS_URL, free_port, unique
from tests.testapp.models import Customer, Order, Product

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _settings(settings):
    settings.AUDIT_STREAM = {"WEBHOOK_ALLOWED_NETWORKS": ["127.0.0.0/8"], "SINK_RETRY_SCHEDULE": [0, 0.05]}


@pytest.fixture
def nats_sink():
    stream, prefix = unique("I20T"), unique("i20t")
    sink = Sink.objects.create(
        name=prefix, kind="nats", target=NATS_URL, options={"stream": stream, "subject_prefix": prefix}
    )
    yield sink
    asyncio.run(_nats(lambda js: js.delete_stream(stream)))


@pytest.fixture
def redis_sink():
    prefix = unique("i20t")
    yield Sink.objects.create(name=prefix, kind="redis", target=REDIS_URL, options={"stream_prefix": prefix})
    client = redis.Redis.from_url(REDIS_URL)
    for key in client.scan_iter(f"{prefix}:*"):
        client.delete(key)


@pytest.fixture
def rabbitmq_sink():
    exchange, queue = unique("i20t"), unique("i20t-products-")
    asyncio.run(_amqp_bind(exchange, queue, "testapp.product.*"))
    sink = Sink.objects.create(
        name=exchange, kind="rabbitmq", target=AMQP_URL, options={"exchange": exchange}
    )
    sink.queue = queue
    yield sink
    asyncio.run(_amqp_cleanup(exchange, queue))


async def _nats(action, url=NATS_URL):
    nc = await nats.connect(url)
    try:
        return await action(nc.jetstream())
    finally:
        await nc.close()


def nats_messages(stream: str, url: str = NATS_URL) -> list:
    """Every message stored in a JetStream stream, in order."""

    async def read(js):
        state = (await js.stream_info(stream)).state
        if not state.messages:
            return []
        return [await js.get_msg(stream, seq) for seq in range(state.first_seq, state.last_seq + 1)]

    return asyncio.run(_nats(read, url))


async def _amqp_bind(exchange: str, queue: str, key: str, url: str = AMQP_URL) -> None:
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        ex = await channel.declare_exchange(exchange, aio_pika.ExchangeType.TOPIC, durable=True)
        q = await channel.declare_queue(queue, durable=True)
        await q.bind(ex, routing_key=key)


async def _amqp_get(queue: str, url: str = AMQP_URL) -> list:
    connection = await aio_pika.connect(url)
    async with connection:
        q = await (await connection.channel()).declare_queue(queue, durable=True)
        found = []
        while (message := await q.get(no_ack=True, fail=False)) is not None:
            found.append(message)
        return found


async def _amqp_cleanup(exchange: str, queue: str, url: str = AMQP_URL) -> None:
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        await channel.queue_delete(queue)
        await channel.exchange_delete(exchange)


def _write_and_fold():
    """A product written in a context, folded; returns the product and the webhook payload it got."""
    WebhookEndpoint.objects.create(url="http://127.0.0.1:9/hook")
    with audit_stream.context(user="ada"):
        product = Product.objects.create(name="lamp", price=3)
    fold.fold_all()
    return product, WebhookMessage.objects.get().payload


def test_a_write_becomes_a_jetstream_message_on_its_objects_subject(nats_sink):
    """The JetStream message: subject <prefix>.<app>.<model>.<pk>, the webhook payload, id headers."""
    product, webhook_payload = _write_and_fold()
    assert delivery.deliver(nats_sink.pk).delivered == 1

    (stored,) = nats_messages(nats_sink.options["stream"])
    message = SinkMessage.objects.get()
    assert stored.subject == f"{nats_sink.options['subject_prefix']}.testapp.product.{product.pk}"
    assert json.loads(stored.data) == webhook_payload
    assert stored.headers["Nats-Msg-Id"] == message.message_id
    assert stored.headers["audit-stream-message-id"] == message.message_id
    assert stored.headers["audit-stream-event-id"] == str(webhook_payload["data"]["event_id"])
    assert (message.status, message.attempts) == ("delivered", 1)


def test_jetstream_drops_a_message_published_twice(nats_sink):
    """A message re-sent (a lost acknowledgement, a replay) is stored once, by its Nats-Msg-Id."""
    _write_and_fold()
    delivery.deliver(nats_sink.pk)
    SinkMessage.objects.update(status="pending")  # as if the acknowledgement had been lost
    assert delivery.deliver(nats_sink.pk).delivered == 1
    assert len(nats_messages(nats_sink.options["stream"])) == 1


def test_a_write_becomes_a_redis_stream_entry_of_its_model(redis_sink):
    """XADD to <prefix>:<app>.<model>, with the object id, message id, event id and webhook payload."""
    product, webhook_payload = _write_and_fold()
    assert delivery.deliver(redis_sink.pk).delivered == 1

    client = redis.Redis.from_url(REDIS_URL)
    ((_, fields),) = client.xrange(f"{redis_sink.options['stream_prefix']}:testapp.product")
    assert json.loads(fields[b"payload"]) == webhook_payload
    assert fields[b"id"].decode() == SinkMessage.objects.get().message_id
    assert fields[b"object_id"].decode() == str(product.pk)
    assert fields[b"event_id"].decode() == str(webhook_payload["data"]["event_id"])


def test_redis_streams_are_trimmed_to_maxlen(redis_sink):
    """MAXLEN bounds the stream (approximately: Redis trims whole nodes)."""
    redis_sink.options["maxlen"] = 10
    redis_sink.save()
    Product.objects.bulk_create([Product(name=f"p{i}") for i in range(300)])
    fold.fold_all()
    assert delivery.deliver(redis_sink.pk).delivered == 300
    length = redis.Redis.from_url(REDIS_URL).xlen(f"{redis_sink.options['stream_prefix']}:testapp.product")
    assert length < 300


def test_a_write_becomes_a_rabbitmq_message_routed_by_object(rabbitmq_sink):
    """Routing key <app>.<model>.<pk>: a queue bound to testapp.product.* gets products only."""
    product, webhook_payload = _write_and_fold()
    Order.objects.create(customer=Customer.objects.create(email="c@example.com", name="C"))
    fold.fold_all()
    assert delivery.deliver(rabbitmq_sink.pk).delivered == SinkMessage.objects.count() > 1

    (received,) = asyncio.run(_amqp_get(rabbitmq_sink.queue))
    message = SinkMessage.objects.get(event_type="testapp.product.snapshot")
    assert received.routing_key == f"testapp.product.{product.pk}"
    assert json.loads(received.body) == webhook_payload
    assert received.message_id == message.message_id
    assert received.headers["audit-stream-event-id"] == str(webhook_payload["data"]["event_id"])


async def _amqp_stream(queue: str, count: int, url: str = AMQP_URL) -> list:
    """The first ``count`` messages of a stream queue, from its first offset (streams have no basic.get)."""
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=100)  # a stream consumer must set a prefetch
        q = await channel.declare_queue(queue, durable=True, arguments={"x-queue-type": "stream"})
        found = []
        async with q.iterator(arguments={"x-stream-offset": "first"}, timeout=15) as messages:
            async for message in messages:
                found.append(message)
                await message.ack()
                if len(found) == count:
                    break
        return found


def test_a_rabbitmq_sink_with_a_queue_fills_a_stream_queue_bound_to_every_key():
    """options["queue"]: a durable stream queue declared by the sink and bound to "#": every message."""
    exchange, queue = unique("i20t"), unique("i20t-stream-")
    sink = Sink.objects.create(
        name=exchange, kind="rabbitmq", target=AMQP_URL, options={"exchange": exchange, "queue": queue}
    )
    try:
        Product.objects.create(name="lamp")
        Order.objects.create(customer=Customer.objects.create(email="s@example.com", name="S"))
        fold.fold_all()
        sent = sorted(m.message_id for m in SinkMessage.objects.all())
        assert delivery.deliver(sink.pk).delivered == len(sent) > 2
        received = asyncio.run(_amqp_stream(queue, len(sent)))
        assert sorted(m.message_id for m in received) == sent
        assert {m.routing_key.rsplit(".", 1)[0] for m in received} >= {"testapp.product", "testapp.order"}
    finally:
        asyncio.run(_amqp_cleanup(exchange, queue))


def test_sinks_get_only_the_changes_their_filters_match(redis_sink):
    """filter_models and filter_labels work as for webhook endpoints; inactive sinks get nothing."""
    redis_sink.filter_models = ["testapp.Order"]
    redis_sink.filter_labels = ["after_insert"]
    redis_sink.save()
    Sink.objects.create(name="off", kind="redis", target=REDIS_URL, is_active=False)
    Product.objects.create(name="lamp")
    Order.objects.create(customer=Customer.objects.create(email="c@example.com", name="C"))
    fold.fold_all()
    assert list(SinkMessage.objects.values_list("sink_id", "event_type")) == [
        (redis_sink.pk, "testapp.order.after_insert")
    ]


def test_sink_messages_are_recorded_in_the_folds_transaction(redis_sink):
    """No message before the fold; one per change after it, carrying the change."""
    Product.objects.create(name="lamp")
    assert not SinkMessage.objects.exists()
    fold.fold("testapp_productevent")
    assert SinkMessage.objects.get().change_id is not None


def test_the_sinks_command_adds_lists_disables_enables_and_replays(capsys):
    """`manage.py sinks` manages sinks by name; replay makes dead messages due again."""
    call_command(
        "sinks", "add", "bus", "redis", REDIS_URL, "--options", '{"maxlen": 100}', "--model", "testapp.order"
    )
    sink = Sink.objects.get(name="bus")
    assert (sink.kind, sink.options, sink.filter_models) == ("redis", {"maxlen": 100}, ["testapp.order"])

    call_command("sinks", "disable", "bus")
    assert not Sink.objects.get(name="bus").is_active
    call_command("sinks", "enable", str(sink.pk))
    assert Sink.objects.get(name="bus").is_active

    Order.objects.create(customer=Customer.objects.create(email="c@example.com", name="C"))
    fold.fold_all()
    SinkMessage.objects.update(status="dead")
    dead = SinkMessage.objects.count()
    call_command("sinks", "replay", "bus")
    assert SinkMessage.objects.filter(status="pending", attempts=0).count() == dead
    call_command("sinks", "list")
    assert f"bus\tredis\t{REDIS_URL}\tactive\tpending {dead}" in capsys.readouterr().out


def test_the_sinks_command_refuses_unknown_models_and_sinks():
    """A filter naming no tracked model, or a sink that does not exist, is an error that says what to do."""
    with pytest.raises(CommandError, match="No tracked or logged model"):
        call_command("sinks", "add", "bus", "redis", REDIS_URL, "--model", "shop.nothing")
    with pytest.raises(CommandError, match="sinks list"):
        call_command("sinks", "replay", "nowhere")


def test_the_admin_lists_sinks_and_replays_their_dead_messages(admin_client):
    """The admin shows sinks; its replay action makes their dead messages due again."""
    sink = Sink.objects.create(name="bus", kind="redis", target=REDIS_URL)
    Product.objects.create(name="lamp")
    fold.fold_all()
    SinkMessage.objects.update(status="dead")
    assert b"bus" in admin_client.get("/admin/audit_stream/sink/").content
    admin_client.post(
        "/admin/audit_stream/sink/", {"action": "replay_dead", "_selected_action": [sink.pk]}, follow=True
    )
    assert set(SinkMessage.objects.values_list("status", flat=True)) == {"pending"}
    assert admin_client.get("/admin/audit_stream/sinkmessage/").status_code == 200


def test_the_sweep_enqueues_sinks_with_due_messages_and_the_task_publishes_them(redis_sink):
    """The sweep names the sinks owing due messages; the Celery task publishes them (run in-process)."""
    Product.objects.create(name="lamp")
    fold.fold_all()
    assert tasks.sweep()["sinks"] == [redis_sink.pk]
    assert tasks.deliver_sink(redis_sink.pk) == {"sink": redis_sink.pk, "delivered": 1, "failed": 0}
    assert SinkMessage.objects.get().status == "delivered"


def test_prometheus_shows_each_sinks_owed_and_dead_messages(redis_sink):
    """audit_stream_sink_messages{sink,status}: pending, sending and dead per sink, delivered not counted."""
    Product.objects.bulk_create([Product(name=f"p{i}") for i in range(3)])
    fold.fold_all()
    SinkMessage.objects.filter(pk=SinkMessage.objects.first().pk).update(status="dead")
    body, _ = metrics.render()
    samples = {
        sample.labels["status"]: sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
        if sample.name == "audit_stream_sink_messages" and sample.labels["sink"] == redis_sink.name
    }
    assert samples == {"pending": 2, "sending": 0, "dead": 1}


def test_a_sink_messages_payload_reads_back_with_exact_decimals(redis_sink):
    """The stored payload decodes prices as Decimal (audit_stream.exact), as webhook payloads do."""
    from decimal import Decimal

    Product.objects.create(name="lamp", price=Decimal("10.10"))
    fold.fold_all()
    price = SinkMessage.objects.get().payload["data"]["snapshot"]["price"]
    assert price == Decimal("10.10") and isinstance(price, Decimal)


def _redis_ids(sink) -> list[str]:
    client = redis.Redis.from_url(REDIS_URL)
    return [
        fields[b"id"].decode()
        for key in client.scan_iter(f"{sink.options['stream_prefix']}:*")
        for _, fields in client.xrange(key)
    ]


def test_a_delivery_of_many_batches_publishes_each_message_once(redis_sink):
    """Batches claimed ahead and recorded behind (threads): each message delivered once, one attempt each."""
    Product.objects.bulk_create([Product(name=f"p{i}") for i in range(53)])
    fold.fold_all()
    result = delivery.deliver(redis_sink.pk, batch_size=10)
    assert (result.delivered, result.failed, result.more) == (53, 0, False)
    assert sorted(_redis_ids(redis_sink)) == sorted(m.message_id for m in SinkMessage.objects.all())
    assert set(SinkMessage.objects.values_list("status", "attempts")) == {("delivered", 1)}


def test_a_message_of_a_sink_not_ordered_is_written_once_when_it_is_delivered(redis_sink):
    """No lease: the batch stays locked while it is published, and each message gets one row update."""
    Product.objects.bulk_create([Product(name=f"p{i}") for i in range(20)])
    fold.fold_all()
    with transaction.atomic(), connection.cursor() as cursor:  # the counts of this transaction alone
        assert delivery.deliver(redis_sink.pk).delivered == 20
        cursor.execute(
            "SELECT n_tup_upd FROM pg_stat_xact_user_tables WHERE relname = 'audit_stream_sinkmessage'"
        )
        assert cursor.fetchone()[0] == 20
    assert set(SinkMessage.objects.values_list("status", "attempts")) == {("delivered", 1)}


def test_two_deliveries_at_once_publish_each_message_once(redis_sink):
    """Two workers delivering one sink: a batch one holds is skipped by the other, never published twice."""
    Product.objects.bulk_create([Product(name=f"p{i}") for i in range(300)])
    fold.fold_all()
    results = []

    def run():
        try:
            results.append(delivery.deliver(redis_sink.pk, batch_size=10))
        finally:
            connection.close()

    workers = [threading.Thread(target=run) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    assert sum(r.delivered for r in results) == 300
    ids = _redis_ids(redis_sink)
    assert len(ids) == len(set(ids)) == 300
    assert set(SinkMessage.objects.values_list("status", "attempts")) == {("delivered", 1)}


def test_a_delivery_out_of_budget_gives_back_the_batch_it_claimed_ahead(redis_sink):
    """The budget spent: the batch claimed meanwhile is due again at once (not leased), no attempt counted."""
    Product.objects.bulk_create([Product(name=f"p{i}") for i in range(53)])
    fold.fold_all()
    result = delivery.deliver(redis_sink.pk, batch_size=10, max_messages=20)
    assert (result.delivered, result.more) == (20, True)
    statuses = SinkMessage.objects.values_list("status", "attempts")
    assert sorted(set(statuses)) == [("delivered", 1), ("pending", 0)]
    assert delivery.due_sinks() == [redis_sink.pk]
    assert delivery.deliver(redis_sink.pk, batch_size=10).delivered == 33
    assert len(_redis_ids(redis_sink)) == 53


def test_redis_refusing_one_entry_fails_that_message_only(redis_sink):
    """An XADD Redis refuses (the key holds a string) fails its message; the batch's others are delivered."""
    redis.Redis.from_url(REDIS_URL).set(
        f"{redis_sink.options['stream_prefix']}:testapp.order", "not a stream"
    )
    Product.objects.create(name="lamp")
    Order.objects.create(customer=Customer.objects.create(email="c@example.com", name="C"))
    fold.fold_all()
    result = delivery.deliver(redis_sink.pk)
    orders = SinkMessage.objects.filter(event_type__startswith="testapp.order.")
    assert (result.delivered, result.failed) == (1, orders.count())
    assert {(m.status, m.attempts) for m in orders} == {("pending", 1)}
    assert all("WRONGTYPE" in m.last_error for m in orders)
    assert SinkMessage.objects.get(status="delivered").event_type.startswith("testapp.product.")


def test_a_failing_broker_gives_back_the_batch_claimed_ahead():
    """The batch fails (broker down): retried later; the batch claimed meanwhile is due again, untried."""
    sink = Sink.objects.create(name="down", kind="redis", target=f"redis://127.0.0.1:{free_port()}/0")
    Product.objects.bulk_create([Product(name=f"p{i}") for i in range(25)])
    fold.fold_all()
    result = delivery.deliver(sink.pk, batch_size=10)
    assert (result.delivered, result.failed) == (0, 10)
    attempts = sorted(SinkMessage.objects.values_list("status", "attempts"))
    assert attempts == [("pending", 0)] * 15 + [("pending", 1)] * 10


def test_a_jetstream_publish_no_stream_takes_fails_with_the_servers_answer(nats_sink):
    """The stream exists but takes other subjects: no acknowledgement; the batch fails and says why."""
    stream = nats_sink.options["stream"]
    asyncio.run(_nats(lambda js: js.add_stream(name=stream, subjects=[f"{unique('other')}.>"])))
    _write_and_fold()
    result = delivery.deliver(nats_sink.pk)
    assert (result.delivered, result.failed) == (0, 1)
    assert "503" in SinkMessage.objects.get().last_error  # NATS "no responders": nothing stored it
