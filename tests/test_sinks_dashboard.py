"""Sinks on the dashboard and in Prometheus: each shown like an endpoint, its counts kept by the delivery."""

import re
from datetime import timedelta

import pytest
import redis
from django.contrib.auth.models import Permission
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from audit_stream.dashboard import metrics
from audit_stream.models import Sink, SinkMessage
from audit_stream.sinks import delivery
from audit_stream.stream import fold
from tests.sink_servers import REDIS_URL, free_port, unique
from tests.testapp.models import Product

pytestmark = pytest.mark.django_db


def _client(django_user_model, *codenames):
    user = django_user_model.objects.create_user("staff", password="pw", is_staff=True)
    user.user_permissions.set(
        Permission.objects.filter(content_type__app_label="audit_stream", codename__in=codenames)
    )
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def sink():
    """A sink with 2 pending, 1 sending and 1 dead message, 7 delivered and a recent error."""
    now = timezone.now()
    sink = Sink.objects.create(name="bus", kind="redis", target=REDIS_URL)
    Sink.objects.filter(pk=sink.pk).update(
        messages_delivered=7, attempts_failed=3, last_delivered_at=now - timedelta(minutes=5),
        last_error="Redis at redis://x: Connection refused", last_error_at=now,
    )  # fmt: skip
    for status in ("pending", "pending", "sending", "dead"):
        SinkMessage.objects.create(
            sink=sink, event_type="testapp.product.snapshot", payload={}, status=status
        )
    return Sink.objects.get(pk=sink.pk)


def _figure(html: str, name: str) -> str:
    match = re.search(rf'data-figure="{name}">([^<]*)<', html)
    assert match, f"no figure {name!r}"
    return match.group(1).strip()


def test_the_sinks_page_shows_each_sinks_queue_counts_and_last_error(django_user_model, sink):
    """Like an endpoint: pending, sending, dead, delivered, failed attempts, health and the last error."""
    html = _client(django_user_model, "view_dashboard").get(reverse("audit_stream:sinks")).content.decode()
    row = html[html.index(f'data-sink="{sink.pk}"') :]
    row = row[: row.index("</tr>")]
    figures = {name: _figure(row, name) for name in ("pending", "sending", "dead", "delivered", "failed")}
    assert figures == {"pending": "2", "sending": "1", "dead": "1", "delivered": "7", "failed": "3"}
    assert "failing" in row and "Connection refused" in row


def test_a_sinks_page_lists_its_newest_messages_by_status(django_user_model, sink):
    client = _client(django_user_model, "view_dashboard")
    url = reverse("audit_stream:sink", args=[sink.pk])
    dead = SinkMessage.objects.get(status="dead")
    html = client.get(url).content.decode()
    assert html.count("data-message=") == 4 and _figure(html, "delivered") == "7"
    html = client.get(url, {"status": "dead"}).content.decode()
    assert re.findall(r'data-message="([^"]+)"', html) == [dead.message_id]
    assert "Replay dead messages" not in html  # a viewer may not replay
    assert client.get(reverse("audit_stream:sink", args=[999999])).status_code == 404


def test_replaying_a_sinks_dead_messages_from_the_dashboard_needs_the_change_permission(
    django_user_model, sink
):
    """A viewer is refused (403, nothing changes); with change_sinkmessage the dead message is due again."""
    url = reverse("audit_stream:replay_sink_dead", args=[sink.pk])
    viewer = _client(django_user_model, "view_dashboard")
    assert viewer.post(url).status_code == 403
    assert SinkMessage.objects.filter(status="dead").count() == 1
    django_user_model.objects.get().user_permissions.add(
        Permission.objects.get(content_type__app_label="audit_stream", codename="change_sinkmessage")
    )
    operator = Client()
    operator.force_login(django_user_model.objects.get())
    assert operator.post(url).status_code == 302
    assert not SinkMessage.objects.filter(status="dead").exists()


def _samples(name: str) -> dict:
    body, _ = metrics.render()
    return {
        tuple(sorted(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
        if sample.name == name
    }


def test_prometheus_counts_each_sinks_deliveries_and_failures(sink):
    samples = _samples("audit_stream_sink_deliveries_total")
    assert samples[(("outcome", "succeeded"), ("sink", "bus"))] == 7
    assert samples[(("outcome", "failed"), ("sink", "bus"))] == 3


@pytest.mark.django_db(transaction=True)
def test_the_delivery_counts_delivered_messages_and_keeps_the_newest_error():
    """Counts on the sink row, added in the transaction recording each batch: delivered, then failed."""
    prefix = unique("i20td")
    sink = Sink.objects.create(name="bus", kind="redis", target=REDIS_URL, options={"stream_prefix": prefix})
    Product.objects.bulk_create([Product(name=f"p{i}") for i in range(3)])
    fold.fold_all()
    assert delivery.deliver(sink.pk).delivered == 3
    redis.Redis.from_url(REDIS_URL).delete(f"{prefix}:testapp.product")
    sink.refresh_from_db()
    assert (sink.messages_delivered, sink.attempts_failed, sink.last_error) == (3, 0, "")
    assert sink.last_delivered_at is not None

    Sink.objects.filter(pk=sink.pk).update(target=f"redis://127.0.0.1:{free_port()}/0")
    Product.objects.create(name="lamp")
    fold.fold_all()
    assert delivery.deliver(sink.pk).failed == 1
    sink.refresh_from_db()
    assert (sink.messages_delivered, sink.attempts_failed) == (3, 1)
    assert "Redis" in sink.last_error and sink.last_error_at > sink.last_delivered_at
