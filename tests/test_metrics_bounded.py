"""The message gauges cost the same at any number of messages: exact up to a few, estimated above.

Counting a status of an endpoint reads each message's row (an index cannot
answer alone before a vacuum), so the count stops at ``MESSAGES_EXACT`` and the
planner's estimate takes over (BENCHMARKS.md, "Scale": 2.4 s at 1,000,000
messages before, tens of ms after). Tested here: exact small counts, the
query count, and the estimate's quality from the statistics the migration adds.
"""

import pytest
from django.db import connection

from audit_stream.dashboard import metrics, queries
from audit_stream.webhooks.models import WebhookEndpoint

pytestmark = pytest.mark.django_db(transaction=True)

MESSAGES = "audit_stream_webhookmessage"
MANY = 1_000


def _insert(endpoint: WebhookEndpoint, status: str, count: int) -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {MESSAGES} (id, endpoint_id, event_type, payload, status, attempts,"
            " next_attempt_at, last_error, created_at)"
            " SELECT gen_random_uuid(), %s, 't', '{}', %s, 0, now(), '', now() - g * interval '1 second'"
            " FROM generate_series(1, %s) AS g",
            [endpoint.pk, status, count],
        )


@pytest.fixture
def endpoints():
    first, second = (
        WebhookEndpoint.objects.create(url=f"https://93.184.215.{14 + i}/hook") for i in range(2)
    )
    _insert(first, "delivered", MANY)
    _insert(first, "pending", 7)
    _insert(second, "dead", MANY // 2)
    _insert(second, "sending", 3)
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {MESSAGES}")
    return first, second


def test_small_counts_are_exact_and_large_ones_estimated(endpoints):
    """Estimated from the statistics of endpoint and status together: each endpoint here has its own."""
    totals = metrics._messages_by_status("default")
    assert (totals["pending"], totals["sending"]) == (7, 3)
    assert totals["delivered"] == pytest.approx(MANY, rel=0.2)
    assert totals["dead"] == pytest.approx(MANY // 2, rel=0.2)


def test_the_message_gauges_take_a_constant_number_of_queries_whatever_the_endpoints(
    endpoints, django_assert_max_num_queries
):
    for i in range(3):
        _insert(WebhookEndpoint.objects.create(url=f"https://93.184.216.{14 + i}/hook"), "dead", 200)
    # The counts, then the estimates in one EXPLAIN (in a transaction that forbids a parallel plan).
    with django_assert_max_num_queries(5):
        metrics._messages_by_status("default")


def test_the_webhooks_pages_show_small_queues_exactly_and_large_ones_estimated(endpoints):
    first, second = endpoints
    health = {h.endpoint.pk: h for h in queries.endpoint_health()}
    assert (health[first.pk].pending_display, health[second.pk].sending_display) == ("7", "3")
    assert health[second.pk].dead_display.startswith("≈")
    assert health[second.pk].dead == pytest.approx(MANY // 2, rel=0.2)
    assert health[second.pk].estimated == {"dead"}


def test_the_queue_sizes_take_two_queries_whatever_the_endpoints(endpoints, django_assert_max_num_queries):
    for i in range(3):
        _insert(WebhookEndpoint.objects.create(url=f"https://93.184.216.{14 + i}/hook"), "pending", 200)
    with django_assert_max_num_queries(7):  # endpoints, 24-hour attempts, queues, estimates (as above)
        queries.endpoint_health()


def test_estimates_keep_the_order_of_their_queues_when_the_planner_would_go_parallel(endpoints):
    """A parallel Append lists its branches by cost: each estimate must still be its own queue's."""
    first, second = endpoints
    cheap_parallel = ["parallel_setup_cost", "parallel_tuple_cost", "min_parallel_table_scan_size"]
    with connection.cursor() as cursor:
        for setting in cheap_parallel:
            cursor.execute(f"SET {setting} = 0")
    try:
        pairs = [(second, "dead"), (first, "delivered"), (first, "pending"), (second, "sending")]
        estimates = queries.estimate_messages([(e.pk, status) for e, status in pairs])
    finally:
        with connection.cursor() as cursor:
            for setting in cheap_parallel:
                cursor.execute(f"RESET {setting}")
    assert estimates[0] == pytest.approx(MANY // 2, rel=0.2)
    assert estimates[1] == pytest.approx(MANY, rel=0.2)
    assert max(estimates[2:]) < MANY // 10
