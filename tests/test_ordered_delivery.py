"""Ordered delivery per object (audit_stream.ordering): webhook endpoints against a real HTTP receiver,
sinks against the real Redis; one object failing while the others flow."""

import io
import json
from datetime import timedelta

import pytest
import redis
from django.db import connection
from django.utils import timezone
from werkzeug import Response

from audit_stream import ordering
from audit_stream.models import Sink, SinkMessage, WebhookEndpoint, WebhookMessage
from audit_stream.sinks import delivery as sink_delivery
from audit_stream.stream import fold
from audit_stream.webhooks import delivery
from tests.procs import wait_until
from tests.sink_servers import REDIS_URL, unique
from tests.testapp.models import Customer, Order, Product

pytestmark = pytest.mark.django_db(transaction=True)

OWED = ["pending", "sending"]


@pytest.fixture(autouse=True)
def _settings(settings):
    settings.AUDIT_STREAM = {
        "WEBHOOK_ALLOWED_NETWORKS": ["127.0.0.0/8"],
        # Many quick retries: a failing object stays owed (not dead) while the test watches.
        "WEBHOOK_RETRY_SCHEDULE": [0] + [0.05] * 200,
        "WEBHOOK_TIMEOUT": [1, 1],
        "SINK_RETRY_SCHEDULE": [0, 3600],
    }


class _Receiver:
    """Answers 500 to the requests for the objects in ``failing``, 200 to the others; logs every request."""

    def __init__(self, httpserver) -> None:
        self.failing: set[str] = set()
        self.fail_event_ids: set[int] = set()
        self.log: list[tuple[str, int, bool]] = []  # (object_id, event_id, answered 2xx)
        httpserver.expect_request("/hook").respond_with_handler(self._answer)
        self.url = httpserver.url_for("/hook")

    def _answer(self, request) -> Response:
        data = json.loads(request.get_data())["data"]
        fails = data["object_id"] in self.failing or data["event_id"] in self.fail_event_ids
        self.log.append((data["object_id"], data["event_id"], not fails))
        return Response("no" if fails else "ok", status=500 if fails else 200)

    def delivered(self, obj) -> list[int]:
        """Event ids of ``obj`` answered 2xx, in arrival order."""
        return [event_id for object_id, event_id, ok in self.log if object_id == str(obj.pk) and ok]

    def attempted(self, obj) -> list[int]:
        return [event_id for object_id, event_id, _ in self.log if object_id == str(obj.pk)]


def _owed(endpoint, obj) -> int:
    key = f"testapp.product:{obj.pk}"
    return WebhookMessage.objects.filter(endpoint=endpoint, object_key=key, status__in=OWED).count()


def _event_ids(endpoint, obj) -> list[int]:
    """The event ids of ``obj``'s messages, in the order they happened."""
    key = f"testapp.product:{obj.pk}"
    return [
        m.payload["data"]["event_id"]
        for m in WebhookMessage.objects.filter(endpoint=endpoint, object_key=key).order_by("change_id")
    ]


def _deliver_until(endpoint, condition, timeout=30, message="delivery"):
    def step():
        delivery.deliver(endpoint.pk)
        return condition()

    wait_until(step, timeout=timeout, message=message)


def test_an_ordered_endpoint_holds_an_objects_next_change_until_the_previous_is_delivered(httpserver):
    """While one object's deliveries fail, its later changes are never attempted, the other object's
    changes are all delivered; then the failing object's changes arrive in order, once each."""
    receiver = _Receiver(httpserver)
    endpoint = WebhookEndpoint.objects.create(url=receiver.url, ordered=True)
    stuck, flowing = Product.objects.create(name="stuck"), Product.objects.create(name="flowing")
    receiver.failing.add(str(stuck.pk))
    for i in range(4):
        Product.objects.filter(pk=stuck.pk).update(stock=i + 1)
        Product.objects.filter(pk=flowing.pk).update(stock=i + 1)
    fold.fold_all()
    stuck_ids, flowing_ids = _event_ids(endpoint, stuck), _event_ids(endpoint, flowing)
    assert len(stuck_ids) == len(flowing_ids) == 5

    _deliver_until(endpoint, lambda: _owed(endpoint, flowing) == 0, message="the flowing object delivered")
    assert receiver.delivered(flowing) == flowing_ids
    attempts_while_failing = receiver.attempted(stuck)
    assert attempts_while_failing and set(attempts_while_failing) == {stuck_ids[0]}
    assert _owed(endpoint, stuck) == 5

    receiver.failing.clear()
    _deliver_until(endpoint, lambda: _owed(endpoint, stuck) == 0, message="the stuck object delivered")
    assert receiver.delivered(stuck) == stuck_ids
    assert receiver.delivered(flowing) == flowing_ids


def test_one_delivery_sends_an_objects_changes_one_after_another(httpserver):
    """deliver() claims again after recording a batch: an object's queue drains in one call, in order."""
    receiver = _Receiver(httpserver)
    endpoint = WebhookEndpoint.objects.create(url=receiver.url, ordered=True)
    product = Product.objects.create(name="busy")
    for i in range(4):
        Product.objects.filter(pk=product.pk).update(stock=i + 1)
    fold.fold_all()
    assert delivery.deliver(endpoint.pk).delivered == 5
    assert receiver.delivered(product) == _event_ids(endpoint, product)


def test_two_workers_delivering_one_ordered_endpoint_keep_each_objects_order(httpserver):
    """Two deliver() loops at once (two worker processes on one endpoint): every change arrives
    once, and each object's changes arrive in the order they happened."""
    import threading

    from django.db import connections

    receiver = _Receiver(httpserver)
    endpoint = WebhookEndpoint.objects.create(url=receiver.url, ordered=True)
    products = Product.objects.bulk_create([Product(name=f"p{i}") for i in range(10)])
    for i in range(5):
        Product.objects.filter(pk__in=[p.pk for p in products]).update(stock=i + 1)
    fold.fold_all()
    expected = {str(p.pk): _event_ids(endpoint, p) for p in products}
    failures = []

    def work():
        try:
            for _ in range(200):
                delivery.deliver(endpoint.pk)
                if not WebhookMessage.objects.filter(status__in=OWED).exists():
                    return
        except Exception as exc:  # reported by the main thread
            failures.append(exc)
        finally:
            connections.close_all()

    workers = [threading.Thread(target=work) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert not failures
    assert {str(p.pk): receiver.delivered(p) for p in products} == expected


def test_an_objects_next_change_is_sent_once_the_previous_went_dead(httpserver, settings):
    """A message that exhausts its retries goes dead and no longer holds back the next one."""
    settings.AUDIT_STREAM = {**settings.AUDIT_STREAM, "WEBHOOK_RETRY_SCHEDULE": [0, 0.05]}
    receiver = _Receiver(httpserver)
    endpoint = WebhookEndpoint.objects.create(url=receiver.url, ordered=True)
    product = Product.objects.create(name="lamp")
    Product.objects.filter(pk=product.pk).update(stock=1)
    fold.fold_all()
    first, second = _event_ids(endpoint, product)
    receiver.fail_event_ids.add(first)

    _deliver_until(endpoint, lambda: _owed(endpoint, product) == 0)
    assert receiver.attempted(product) == [first, first, second]
    statuses = WebhookMessage.objects.order_by("change_id").values_list("status", flat=True)
    assert list(statuses) == ["dead", "delivered"]


def test_replaying_a_dead_message_holds_the_objects_later_changes_behind_it(httpserver, settings):
    """Replay on an ordered endpoint: changes already delivered are not sent again; the object's
    changes recorded after the replay wait until the replayed message is delivered."""
    settings.AUDIT_STREAM = {**settings.AUDIT_STREAM, "WEBHOOK_RETRY_SCHEDULE": [0, 0.05]}
    receiver = _Receiver(httpserver)
    endpoint = WebhookEndpoint.objects.create(url=receiver.url, ordered=True)
    product = Product.objects.create(name="lamp")
    Product.objects.filter(pk=product.pk).update(stock=1)
    fold.fold_all()
    first, second = _event_ids(endpoint, product)
    receiver.fail_event_ids.add(first)
    _deliver_until(endpoint, lambda: _owed(endpoint, product) == 0)
    dead = WebhookMessage.objects.get(status="dead")

    settings.AUDIT_STREAM = {**settings.AUDIT_STREAM, "WEBHOOK_RETRY_SCHEDULE": [0, 3600]}
    assert delivery.replay([dead]) == 1
    Product.objects.filter(pk=product.pk).update(stock=2)
    fold.fold_all()
    third = _event_ids(endpoint, product)[-1]
    delivery.deliver(endpoint.pk)  # the replayed message fails again; the third change waits
    assert third not in receiver.attempted(product)
    assert WebhookMessage.objects.get(pk=dead.pk).status == "pending"

    receiver.fail_event_ids.clear()
    WebhookMessage.objects.filter(pk=dead.pk).update(next_attempt_at=dead.created_at)  # its retry is due
    _deliver_until(endpoint, lambda: _owed(endpoint, product) == 0)
    assert receiver.delivered(product) == [second, first, third]


def test_an_unordered_endpoint_sends_an_objects_later_changes_while_an_earlier_one_fails(httpserver):
    """The default: no waiting, so a failing change is overtaken by the object's later ones."""
    receiver = _Receiver(httpserver)
    endpoint = WebhookEndpoint.objects.create(url=receiver.url)
    product = Product.objects.create(name="lamp")
    Product.objects.filter(pk=product.pk).update(stock=1)
    fold.fold_all()
    first, second = [m.payload["data"]["event_id"] for m in WebhookMessage.objects.order_by("change_id")]
    receiver.fail_event_ids.add(first)
    delivery.deliver(endpoint.pk)
    assert second in receiver.delivered(product)
    assert WebhookMessage.objects.filter(object_key__isnull=False).count() == 0


def test_a_failing_objects_queue_is_parked_so_a_claim_reads_only_heads(httpserver):
    """One claim parks the messages behind a failing head; later claims' index scans skip them."""
    receiver = _Receiver(httpserver)
    endpoint = WebhookEndpoint.objects.create(url=receiver.url, ordered=True)
    stuck = Product.objects.create(name="stuck")
    receiver.failing.add(str(stuck.pk))
    for i in range(300):
        Product.objects.filter(pk=stuck.pk).update(stock=i + 1)
    fold.fold_all()
    delivery.deliver(endpoint.pk)
    assert WebhookMessage.objects.filter(held=True).count() == 300  # all but the head
    WebhookMessage.objects.filter(held=False).update(next_attempt_at=timezone.now())  # the head is due

    lock_sql, _ = ordering.claim_sql("audit_stream_webhookmessage", "endpoint_id", "m.id")
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE audit_stream_webhookmessage")
        cursor.execute(
            "EXPLAIN (ANALYZE, FORMAT JSON) " + lock_sql,
            {"subscriber": endpoint.pk, "limit": 100, "floor": None},
        )
        plan = cursor.fetchone()[0][0]["Plan"]
    scanned = _rows_read(plan, "audit_stream_webhookmessage")
    assert scanned <= 2, plan


def test_a_claim_reads_only_due_messages_however_many_wait_for_a_retry(httpserver):
    """Messages waiting for a later retry (an endpoint back from an outage) cost a claim nothing:
    it reads a range of the index of owed messages by due time, not every older message."""
    endpoint = WebhookEndpoint.objects.create(url=httpserver.url_for("/hook"))
    Product.objects.bulk_create([Product(name=f"p{i}") for i in range(400)])
    fold.fold_all()
    waiting = WebhookMessage.objects.order_by("created_at", "id").values_list("pk", flat=True)[:300]
    later = timezone.now() + timedelta(hours=1)
    WebhookMessage.objects.filter(pk__in=list(waiting)).update(next_attempt_at=later, attempts=1)
    WebhookMessage.objects.exclude(pk__in=list(waiting)).update(created_at=later)  # recorded after them

    lock_sql, _ = ordering.claim_sql("audit_stream_webhookmessage", "endpoint_id", "m.id")
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE audit_stream_webhookmessage")
        cursor.execute(
            "EXPLAIN (ANALYZE, FORMAT JSON) " + lock_sql,
            {"subscriber": endpoint.pk, "limit": 50, "floor": None},
        )
        plan = cursor.fetchone()[0][0]["Plan"]
    assert _rows_read(plan, "audit_stream_webhookmessage") <= 50, plan


def _rows_read(plan: dict, table: str) -> int:
    """Rows the scans of ``table`` returned in an EXPLAIN ANALYZE plan."""
    found, stack = 0, [plan]
    while stack:
        node = stack.pop()
        if "Scan" in node["Node Type"] and node.get("Relation Name") == table:
            found += node["Actual Rows"] * node.get("Actual Loops", 1) + node.get("Rows Removed by Filter", 0)
        stack.extend(node.get("Plans", []))
    return found


# --------------------------------------------------------------------------- sinks


@pytest.fixture
def redis_sink():
    prefix = unique("i20o")
    sink = Sink.objects.create(
        name=prefix, kind="redis", target=REDIS_URL, options={"stream_prefix": prefix}, ordered=True
    )
    yield sink
    client = redis.Redis.from_url(REDIS_URL)
    for key in client.scan_iter(f"{prefix}:*"):
        client.delete(key)


def _stream(sink, model) -> list[tuple[str, int]]:
    """(object_id, event_id) of every entry of the sink's stream for ``model``, in stream order."""
    client = redis.Redis.from_url(REDIS_URL)
    entries = client.xrange(f"{sink.options['stream_prefix']}:{model}")
    return [(fields[b"object_id"].decode(), int(fields[b"event_id"])) for _, fields in entries]


def test_an_ordered_sink_publishes_an_objects_next_change_only_after_the_previous(redis_sink):
    """A product's first publish fails (its stream key is not a stream); an order flows meanwhile;
    the product's second change waits for the first, and the stream holds them in order."""
    client = redis.Redis.from_url(REDIS_URL)
    product_stream = f"{redis_sink.options['stream_prefix']}:testapp.product"
    client.set(product_stream, "not a stream")  # XADD answers WRONGTYPE: this object's publish fails
    product = Product.objects.create(name="lamp")
    order = Order.objects.create(customer=Customer.objects.create(email="ada@example.com", name="Ada"))
    fold.fold_all()
    sink_delivery.deliver(redis_sink.pk)
    orders = SinkMessage.objects.filter(event_type__startswith="testapp.order")
    assert orders and all(m.status == "delivered" for m in orders)
    assert {object_id for object_id, _ in _stream(redis_sink, "testapp.order")} == {str(order.pk)}
    first = SinkMessage.objects.get(event_type__startswith="testapp.product")
    assert (first.status, first.attempts) == ("pending", 1)

    client.delete(product_stream)  # the broker accepts the product again
    Product.objects.filter(pk=product.pk).update(stock=1)
    fold.fold_all()
    sink_delivery.deliver(redis_sink.pk)  # the second change waits: the first is not due yet
    assert _stream(redis_sink, "testapp.product") == []

    SinkMessage.objects.filter(pk=first.pk).update(next_attempt_at=first.created_at)  # its retry is due

    def settled():
        sink_delivery.deliver(redis_sink.pk)
        return not SinkMessage.objects.filter(status__in=OWED).exists()

    wait_until(settled, timeout=20, message="the sink's messages delivered")
    published = _stream(redis_sink, "testapp.product")
    products = SinkMessage.objects.filter(event_type__startswith="testapp.product")
    expected = sorted(m.payload["data"]["event_id"] for m in products)
    assert published == [(str(product.pk), event_id) for event_id in expected]


# --------------------------------------------------------------------------- declaring it


def test_the_commands_add_ordered_endpoints_and_sinks():
    """`webhooks add --ordered` and `sinks add --ordered` declare them ordered; unordered is the default."""
    from django.core.management import call_command

    call_command("webhooks", "add", "http://127.0.0.1:9/ordered", "--ordered", stdout=io.StringIO())
    call_command("webhooks", "add", "http://127.0.0.1:9/plain", stdout=io.StringIO())
    call_command("sinks", "add", "ordered-feed", "redis", REDIS_URL, "--ordered", stdout=io.StringIO())
    call_command("sinks", "add", "plain-feed", "redis", REDIS_URL, stdout=io.StringIO())
    assert dict(WebhookEndpoint.objects.values_list("url", "ordered")) == {
        "http://127.0.0.1:9/ordered": True,
        "http://127.0.0.1:9/plain": False,
    }
    assert dict(Sink.objects.values_list("name", "ordered")) == {"ordered-feed": True, "plain-feed": False}
    listed = io.StringIO()
    call_command("sinks", "list", stdout=listed)
    assert "active, ordered" in listed.getvalue()


def test_the_admin_forms_offer_ordered():
    """The endpoint and sink forms of the admin set `ordered`."""
    from audit_stream.admin import WebhookEndpointForm
    from audit_stream.sinks.admin import SinkForm

    assert "ordered" in WebhookEndpointForm.base_fields and "ordered" in SinkForm.base_fields
