"""The claims' floor (audit_stream.ordering): a claim reads from its endpoint's (or sink's) floor, not
from the index entries every delivered message leaves behind; what becomes owed below the floor is
found by the sweep. Against a real HTTP receiver on loopback, and this machine's Redis for sinks."""

import contextlib
from datetime import timedelta

import psycopg
import pytest
from django.db import connection, transaction
from django.utils import timezone

from audit_stream import tasks
from audit_stream.models import Sink, SinkMessage, WebhookEndpoint, WebhookMessage
from audit_stream.sinks import delivery as sink_delivery
from audit_stream.stream import fold, listen
from audit_stream.webhooks import delivery
from tests.test_sinks import redis_sink  # noqa: F401 (a fixture)
from tests.testapp.models import Product

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _loopback_allowed(settings):
    settings.AUDIT_STREAM = {"WEBHOOK_ALLOWED_NETWORKS": ["127.0.0.0/8"], "WEBHOOK_TIMEOUT": [1, 1]}


@pytest.fixture
def endpoint(httpserver):
    httpserver.expect_request("/hook").respond_with_data("ok")
    return WebhookEndpoint.objects.create(url=httpserver.url_for("/hook"))


@pytest.fixture
def old_snapshot():
    """A transaction elsewhere holding a snapshot: no dead index entry can be dropped or marked dead
    meanwhile (as during any long transaction, an autovacuum's ANALYZE, a dashboard's query)."""
    settings = connection.settings_dict
    with psycopg.connect(
        host=settings["HOST"], port=settings["PORT"], user=settings["USER"], dbname=settings["NAME"]
    ) as other:
        other.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        other.execute("SELECT 1 FROM audit_stream_webhookmessage LIMIT 1")
        yield
        other.rollback()


@pytest.fixture
def sink(redis_sink):  # noqa: F811 (tests.test_sinks's)
    return redis_sink


def _buffers_of_a_claim(subscriber: int, floor, sql: str = delivery._LOCK_SQL) -> int:
    """Shared buffers a claim's locking statement ``sql`` reads (EXPLAIN ANALYZE, rolled back)."""
    with connection.cursor() as cursor:
        cursor.execute("BEGIN")
        cursor.execute(
            "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + sql,
            {"subscriber": subscriber, "limit": 50, "floor": floor},
        )
        plan = cursor.fetchone()[0][0]["Plan"]
        cursor.execute("ROLLBACK")
    return plan["Shared Hit Blocks"] + plan["Shared Read Blocks"]


def _new_messages(count: int) -> None:
    first = Product.objects.count()
    Product.objects.bulk_create([Product(name=f"p{first + i}") for i in range(count)])
    fold.fold_all()


@contextlib.contextmanager
def _listener():
    """A listener's poll on a connection of its own, and the tasks it enqueued (no Redis dedupe here)."""
    enqueued = []
    listener = listen.Listener(
        connection.get_connection_params(), enqueue=lambda *task: enqueued.append(task)
    )
    listener._enqueue = lambda task, *args: enqueued.append((task, *args))
    settings = connection.settings_dict
    with psycopg.connect(
        host=settings["HOST"],
        port=settings["PORT"],
        user=settings["USER"],
        dbname=settings["NAME"],
        autocommit=True,
    ) as conn:
        yield (lambda: listener._poll(conn)), enqueued


def _late_sink_message(sink: Sink) -> SinkMessage:
    """A message owed to ``sink`` a minute ago, below a floor raised since (it committed late)."""
    return SinkMessage.objects.create(
        sink=sink,
        event_type="audit_stream.test",
        payload={
            "type": "audit_stream.test",
            "data": {"model": "testapp.product", "object_id": "1", "event_id": 1},
        },
        next_attempt_at=timezone.now() - timedelta(minutes=1),
    )


def _owed(subscriber: WebhookEndpoint | Sink, count: int, due) -> None:
    """``count`` messages owed to ``subscriber``, due within a second from ``due``, not in the order
    they are stored (as messages of many subscribers and retries are), with no index entry before
    that: a fold's first due times would lie within the claim's margin of a floor raised at once."""
    model, field = (SinkMessage, "sink") if isinstance(subscriber, Sink) else (WebhookMessage, "endpoint")
    model.objects.bulk_create(
        model(
            **{field: subscriber},
            event_type="testapp.product.insert",
            payload={
                "type": "testapp.product.insert",
                "data": {"model": "testapp.product", "object_id": str(i), "event_id": i},
            },
            next_attempt_at=due + timedelta(milliseconds=i * 7919 % count),
            object_key=f"testapp.product:{i}" if subscriber.ordered else None,
        )
        for i in range(count)
    )


def test_a_claim_reads_from_its_floor_not_the_entries_of_delivered_messages(endpoint, old_snapshot):
    """After 1,000 deliveries whose index entries are still there, a claim of the next message reads a
    few pages; from no floor it reads through every one of them."""
    _owed(endpoint, 1000, timezone.now() - timedelta(hours=1))  # an hour's worth
    while delivery.deliver(endpoint.pk).delivered:
        pass
    assert not WebhookMessage.objects.exclude(status="delivered").exists()
    _new_messages(1)
    floor = WebhookEndpoint.objects.get(pk=endpoint.pk).due_floor
    assert floor is not None
    from_floor, from_nothing = _buffers_of_a_claim(endpoint.pk, floor), _buffers_of_a_claim(endpoint.pk, None)
    assert from_floor <= 10, from_floor
    assert from_nothing >= 10 * from_floor  # the entries are there: the floor is what skips them


def test_a_message_owed_below_the_floor_is_delivered_once_the_sweep_lowers_it(endpoint, httpserver):
    """A message whose due time lies below the floor (its transaction committed late) is out of the
    claims' reach until the sweep finds it and lowers the floor; then it is delivered, once."""
    _new_messages(1)
    assert delivery.deliver(endpoint.pk).delivered == 1
    late = WebhookMessage.objects.create(
        endpoint=endpoint,
        event_type="audit_stream.test",
        payload={"type": "audit_stream.test"},
        next_attempt_at=timezone.now() - timedelta(minutes=1),
    )
    assert delivery.deliver(endpoint.pk).delivered == 0
    assert tasks.endpoints_with_due_messages() == [endpoint.pk]
    assert WebhookEndpoint.objects.get(pk=endpoint.pk).due_floor == late.next_attempt_at
    assert delivery.deliver(endpoint.pk).delivered == 1
    assert WebhookMessage.objects.get(pk=late.pk).status == "delivered"
    assert len(httpserver.log) == 2


def test_the_listeners_check_starts_from_the_floor_as_the_claims_do(endpoint):
    """The listener enqueues an endpoint whose messages a claim would take, and no other."""
    _new_messages(1)
    with connection.cursor() as cursor:
        cursor.execute(delivery.DUE_ENDPOINTS_SQL)
        assert [row[0] for row in cursor.fetchall()] == [endpoint.pk]
    delivery.deliver(endpoint.pk)
    WebhookMessage.objects.create(
        endpoint=endpoint,
        event_type="audit_stream.test",
        payload={"type": "audit_stream.test"},
        next_attempt_at=timezone.now() - timedelta(minutes=1),
    )
    with connection.cursor() as cursor:
        cursor.execute(delivery.DUE_ENDPOINTS_SQL)
        assert cursor.fetchall() == []  # below the floor: the sweep's to find


def test_a_claim_does_not_raise_a_floor_the_sweep_lowered_meanwhile(endpoint):
    """The raise is conditional on the floor the claim started from."""
    started = timezone.now()
    lowered = started - timedelta(hours=1)
    WebhookEndpoint.objects.filter(pk=endpoint.pk).update(due_floor=lowered)  # the sweep, meanwhile
    with connection.cursor() as cursor:
        cursor.execute(
            delivery._CLAIMS.raise_floor_sql, {"subscriber": endpoint.pk, "floor": started, "read": started}
        )
    assert WebhookEndpoint.objects.get(pk=endpoint.pk).due_floor == lowered


def test_a_message_unparked_is_claimed_though_its_first_due_time_lies_below_the_floor(endpoint):
    """An ordered object's next change, parked behind its head, is due again when unparked: the claims
    that raised the floor meanwhile do not leave it behind."""
    WebhookEndpoint.objects.filter(pk=endpoint.pk).update(ordered=True)
    product = Product.objects.create(name="ordered")
    Product.objects.filter(pk=product.pk).update(stock=1)
    fold.fold_all()
    WebhookMessage.objects.update(next_attempt_at=timezone.now() - timedelta(hours=1))  # both long due
    assert delivery.deliver(endpoint.pk).delivered == 2


def test_the_listener_lowers_the_floors_as_the_sweep_does_when_no_beat_runs(endpoint):
    """A deployment with a listener and no beat: the listener's first poll (and one every
    SWEEP_INTERVAL) reads from no floor, so a message owed below the floor is still enqueued."""
    _new_messages(1)
    delivery.deliver(endpoint.pk)
    late = WebhookMessage.objects.create(
        endpoint=endpoint,
        event_type="audit_stream.test",
        payload={"type": "audit_stream.test"},
        next_attempt_at=timezone.now() - timedelta(minutes=1),
    )
    with _listener() as (poll, enqueued):
        poll()
    assert ("audit_stream.deliver", endpoint.pk) in enqueued
    assert WebhookEndpoint.objects.get(pk=endpoint.pk).due_floor == late.next_attempt_at


def _publish_all(sink_id: int) -> None:
    while sink_delivery.deliver(sink_id, batch_size=100).delivered:
        pass
    assert not SinkMessage.objects.exclude(status="delivered").exists()


def _floor(sink_id: int):
    return Sink.objects.get(pk=sink_id).due_floor


@pytest.mark.parametrize("ordered", [False, True], ids=["held", "leased"])
def test_a_sinks_claim_reads_from_its_floor_not_the_entries_of_published_messages(
    sink, old_snapshot, ordered
):
    """Sinks claim as endpoints do: after 1,000 messages published whose index entries are still
    there, the claim of the next reads a few pages, held (a sink not ordered) or leased (ordered)."""
    Sink.objects.filter(pk=sink.pk).update(ordered=ordered)
    sink.refresh_from_db()
    _owed(sink, 1000, timezone.now() - timedelta(hours=1))  # an hour's worth
    _publish_all(sink.pk)
    _new_messages(1)
    floor = _floor(sink.pk)
    assert floor is not None
    sql = sink_delivery._LOCK_SQL if ordered else sink_delivery._HELD_CLAIM_SQL
    from_floor, from_nothing = (
        _buffers_of_a_claim(sink.pk, floor, sql),
        _buffers_of_a_claim(sink.pk, None, sql),
    )
    assert from_floor <= 10, from_floor
    assert from_nothing >= 10 * from_floor


def test_a_sink_message_owed_below_the_floor_is_published_once_the_sweep_lowers_it(sink):
    _new_messages(1)
    assert sink_delivery.deliver(sink.pk).delivered == 1
    late = _late_sink_message(sink)
    assert sink_delivery.due_sinks() == []  # the fold's check reads from the floor, as claims do
    assert sink_delivery.deliver(sink.pk).delivered == 0
    assert sink_delivery.due_sinks(lower_floors=True) == [sink.pk]  # the sweep's
    assert _floor(sink.pk) == late.next_attempt_at
    assert sink_delivery.deliver(sink.pk).delivered == 1
    assert SinkMessage.objects.get(pk=late.pk).status == "delivered"


def test_a_held_batch_raises_the_floor_when_its_outcomes_commit_and_locks_no_sink_meanwhile(sink):
    """The floor rises in the transaction recording a held batch: while it is held (published), the
    floor stays where the claim read it, and the sink's row is free (the other lane's claims and
    records write it); rolled back, the batch never raised it."""
    _new_messages(3)
    lane = sink_delivery._Lane(threaded=True)
    try:
        batch = lane.claim(sink.pk, 10).result()
        assert len(batch) == 3
        assert _floor(sink.pk) is None  # held: not yet
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("SET LOCAL lock_timeout = '2s'")  # fails, rather than waits for the publish
            cursor.execute("UPDATE audit_stream_sink SET last_error = last_error WHERE id = %s", [sink.pk])
        lane.finish(
            sink_delivery._outcomes(batch, [None] * 3, sink_delivery.DeliveryResult(sink.pk))
        ).result()
        assert _floor(sink.pk) == SinkMessage.objects.order_by("next_attempt_at")[0].next_attempt_at
    finally:
        lane.close()


def test_a_held_batch_given_back_lowers_the_floor_another_batch_raised_past_it(sink):
    """Two held batches: the later one is published and raises the floor past the earlier, which is
    then given back unpublished (its delivery's budget ran out). It lowers the floor to itself, so
    the next delivery publishes it, without waiting for the sweep."""
    _new_messages(10)
    oldest = SinkMessage.objects.order_by("next_attempt_at", "id").values_list("pk", flat=True)[:5]
    SinkMessage.objects.filter(pk__in=list(oldest)).update(
        next_attempt_at=timezone.now() - timedelta(hours=1)
    )
    first, second = sink_delivery._Lane(threaded=True), sink_delivery._Lane(threaded=True)
    try:
        earlier = first.claim(sink.pk, 5).result()
        later = second.claim(sink.pk, 5).result()  # skips the rows the first holds
        outcomes = sink_delivery._outcomes(later, [None] * 5, sink_delivery.DeliveryResult(sink.pk))
        second.finish(outcomes).result()
        assert _floor(sink.pk) > timezone.now() - timedelta(minutes=1)  # past the earlier batch
        first.finish(None).result()  # given back
    finally:
        first.close()
        second.close()
    assert {message.id for message, _ in earlier} == {f"msg_{pk.hex}" for pk in oldest}
    assert _floor(sink.pk) < timezone.now() - timedelta(minutes=59)
    assert sink_delivery.deliver(sink.pk).delivered == 5


def test_a_leased_batch_given_back_lowers_the_floor_to_itself(sink):
    """An ordered sink's batch released unpublished is due again from its first due time, below the
    floor a later claim raised: the floor comes down to it."""
    Sink.objects.filter(pk=sink.pk).update(ordered=True)
    _new_messages(10)
    oldest = SinkMessage.objects.order_by("next_attempt_at", "id").values_list("pk", flat=True)[:5]
    SinkMessage.objects.filter(pk__in=list(oldest)).update(
        next_attempt_at=timezone.now() - timedelta(hours=1)
    )
    lanes = sink_delivery._LeasedLanes(sink.pk)
    earlier = sink_delivery._claim(sink.pk, 5)
    later = sink_delivery._claim(sink.pk, 5)
    assert _floor(sink.pk) > timezone.now() - timedelta(minutes=1)
    lanes.release(earlier)
    lanes.close()
    assert _floor(sink.pk) < timezone.now() - timedelta(minutes=59)
    SinkMessage.objects.filter(id__in=[m.id.removeprefix("msg_") for m, _ in later]).update(
        status="delivered", lease_until=None
    )
    assert sink_delivery.deliver(sink.pk).delivered == 5


def test_the_listener_enqueues_due_sinks_and_lowers_their_floors_every_sweep_interval(sink):
    """The fold enqueues sink deliveries as it records messages; retries, and what became owed below
    a sink's floor, are enqueued by the sweep, and by the listener when no beat runs."""
    _new_messages(1)
    sink_delivery.deliver(sink.pk)
    late = _late_sink_message(sink)
    with _listener() as (poll, enqueued):
        poll()  # its first poll: a sweep
        assert ("audit_stream.deliver_sink", sink.pk) in enqueued
        assert _floor(sink.pk) == late.next_attempt_at
        enqueued.clear()
        poll()  # not again until SWEEP_INTERVAL has passed
        assert ("audit_stream.deliver_sink", sink.pk) not in enqueued


_DELIVERED_ONCE_OWED_TWICE = """
INSERT INTO {table} (id, {subscriber}, event_type, payload, status, attempts, next_attempt_at, last_error,
                     created_at, held)
SELECT gen_random_uuid(), %(subscriber)s, 'x', '{{}}'::jsonb, 'pending', 0, t, '', t, false
FROM generate_series(1, 2000) AS g,
     LATERAL (SELECT now() - interval '1 hour' + g * interval '1 ms') AS due(t);
UPDATE {table} SET status = 'sending', lease_until = now() + interval '1 minute';
UPDATE {table} SET status = 'delivered', lease_until = NULL;
INSERT INTO {table} (id, {subscriber}, event_type, payload, status, attempts, next_attempt_at, last_error,
                     created_at, held)
SELECT gen_random_uuid(), %(subscriber)s, 'x', '{{}}'::jsonb, 'pending', 0, clock_timestamp(), '', now(),
       false
FROM generate_series(1, 2) AS g;
ANALYZE {table};
"""


@pytest.mark.parametrize("kind", ["webhook", "sink"])
def test_a_claim_reads_its_index_in_due_order_when_the_statistics_favour_the_status_index(kind, sink):
    """2,000 messages delivered, two owed, the table analysed: the planner's estimates favour the
    subscriber's index on status and a sort, which reads the entries of every delivered message.
    The claim's settings (ordering.CLAIM_SETTINGS, in its first statement) keep it on the claimable
    index from its floor."""
    if kind == "webhook":
        subscriber = WebhookEndpoint.objects.create(url="http://127.0.0.1:9/hook").pk
        table, column, claims, lock = (
            "audit_stream_webhookmessage",
            "endpoint_id",
            delivery._CLAIMS,
            delivery._LOCK_SQL,
        )
    else:
        subscriber = sink.pk
        table, column, claims = "audit_stream_sinkmessage", "sink_id", sink_delivery._CLAIMS
        lock = sink_delivery._HELD_CLAIM_SQL
    with connection.cursor() as cursor:
        cursor.execute(
            _DELIVERED_ONCE_OWED_TWICE.format(table=table, subscriber=column), {"subscriber": subscriber}
        )

    def plan(settings: bool) -> str:
        with transaction.atomic(), connection.cursor() as cursor:
            if settings:
                cursor.execute(claims.read_floor_sql, {"subscriber": subscriber})  # as a claim begins
            params = {"subscriber": subscriber, "limit": 100, "floor": timezone.now() - timedelta(seconds=5)}
            cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + lock, params)
            return "\n".join(row[0] for row in cursor.fetchall())

    assert "Sort" in plan(settings=False)  # what the statistics alone choose
    claimed = plan(settings=True)
    assert "Sort" not in claimed and "_claimable" in claimed, claimed
