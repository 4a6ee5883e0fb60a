"""Delivery attempts are counted per endpoint and hour as they are recorded; pages read the counts."""

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from audit_stream.dashboard import queries
from audit_stream.webhooks.models import WebhookAttempt, WebhookEndpoint, WebhookHour, WebhookMessage

pytestmark = pytest.mark.django_db


@pytest.fixture
def endpoint():
    return WebhookEndpoint.objects.create(url="http://93.184.215.14/hooks")  # a public address, never called


def _attempts(endpoint, *outcomes, at=None):
    """One message with one attempt per (succeeded, error), inserted in one statement."""
    message = WebhookMessage.objects.create(endpoint=endpoint, event_type="t", payload={})
    WebhookAttempt.objects.bulk_create(
        WebhookAttempt(message=message, succeeded=ok, error=error, attempted_at=at or timezone.now())
        for ok, error in outcomes
    )
    return message


def test_each_batch_of_attempts_is_added_to_its_endpoints_hour(endpoint):
    """Two batches in one hour make one row with their sums and the newest failure's error."""
    _attempts(endpoint, (True, ""), (False, "HTTP 500"))
    _attempts(endpoint, (True, ""), (False, "HTTP 503"), (True, ""))
    (hour,) = WebhookHour.objects.filter(endpoint=endpoint)
    assert (hour.attempts, hour.succeeded, hour.last_error) == (5, 3, "HTTP 503")


def test_attempts_older_than_a_day_leave_the_24_hour_figures(endpoint):
    """An attempt 30 hours ago is in its own hour, outside the dashboard's 24 hours."""
    _attempts(endpoint, (False, "old"), at=timezone.now() - timedelta(hours=30))
    _attempts(endpoint, (True, ""))
    (health,) = queries.endpoint_health(endpoint.pk)
    assert (health.attempts_24h, health.succeeded_24h, health.last_error) == (1, 1, "")


def test_webhook_pages_never_read_the_attempts(endpoint, admin_client):
    """The webhooks overview, an endpoint's page and the metrics count from the hourly rows."""
    _attempts(endpoint, (True, ""), (False, "HTTP 500"))
    for url in (
        reverse("audit_stream:webhooks"),
        reverse("audit_stream:endpoint", args=[endpoint.pk]),
        reverse("audit_stream:metrics"),
    ):
        with CaptureQueriesContext(connection) as seen:
            assert admin_client.get(url).status_code == 200
        assert not [q["sql"] for q in seen.captured_queries if "audit_stream_webhookattempt" in q["sql"]], url
