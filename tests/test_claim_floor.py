"""The claims' floor (audit_stream.ordering): a claim reads from its endpoint's floor, not from the
index entries every delivered message leaves behind; what becomes owed below the floor is found by
the sweep. Against a real HTTP receiver on loopback."""

from datetime import timedelta

import psycopg
import pytest
from django.db import connection
from django.utils import timezone

from audit_stream import tasks
from audit_stream.models import WebhookEndpoint, WebhookMessage
from audit_stream.stream import fold, listen
from audit_stream.webhooks import delivery
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


def _buffers_of_a_claim(endpoint_id: int, floor) -> int:
    """Shared buffers the claim's locking statement reads (EXPLAIN ANALYZE, rolled back)."""
    with connection.cursor() as cursor:
        cursor.execute("BEGIN")
        cursor.execute(
            "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + delivery._LOCK_SQL,
            {"subscriber": endpoint_id, "limit": 50, "floor": floor},
        )
        plan = cursor.fetchone()[0][0]["Plan"]
        cursor.execute("ROLLBACK")
    return plan["Shared Hit Blocks"] + plan["Shared Read Blocks"]


def _new_messages(count: int) -> None:
    first = Product.objects.count()
    Product.objects.bulk_create([Product(name=f"p{first + i}") for i in range(count)])
    fold.fold_all()


def test_a_claim_reads_from_its_floor_not_the_entries_of_delivered_messages(endpoint, old_snapshot):
    """After 1,000 deliveries whose index entries are still there, a claim of the next message reads a
    few pages; from no floor it reads through every one of them."""
    _new_messages(1000)
    WebhookMessage.objects.update(next_attempt_at=timezone.now() - timedelta(hours=1))  # an hour's worth
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
            delivery._RAISE_FLOOR_SQL, {"subscriber": endpoint.pk, "floor": started, "read": started}
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
    enqueued = []
    listener = listen.Listener(
        connection.get_connection_params(), enqueue=lambda *task: enqueued.append(task)
    )
    listener._enqueue = lambda task, *args: enqueued.append((task, *args))  # no Redis dedupe in this test
    settings = connection.settings_dict
    with psycopg.connect(
        host=settings["HOST"],
        port=settings["PORT"],
        user=settings["USER"],
        dbname=settings["NAME"],
        autocommit=True,
    ) as conn:
        listener._poll(conn)
    assert ("audit_stream.deliver", endpoint.pk) in enqueued
    assert WebhookEndpoint.objects.get(pk=endpoint.pk).due_floor == late.next_attempt_at
