"""History changelists in the admin: a page costs the same at any history size, and no event hides."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

import audit_stream
from audit_stream.admin import changelists
from audit_stream.models import Change
from tests.testapp.models import Product

pytestmark = pytest.mark.django_db

EVENTS = reverse("admin:testapp_productevent_changelist")
CHANGES = reverse("admin:audit_stream_change_changelist")


def _products(count: int, prefix: str = "p") -> None:
    """``count`` products, each created in its own context (one event and one context each)."""
    for i in range(count):
        with audit_stream.context(user=i):
            Product.objects.create(name=f"{prefix}{i}")


def _change(event_id: int, model: str, object_id: str) -> Change:
    return Change.objects.create(
        event_table="testapp_productevent", event_id=event_id, model=model, object_id=object_id,
        label="snapshot", diff={}, snapshot={}, created_at=timezone.now(),
    )  # fmt: skip


def test_events_of_a_deleted_object_stay_listed(admin_client):
    """Filtering the event changelist by a deleted object shows its events, not a count without rows."""
    product = Product.objects.create(name="gone")
    pk = product.pk
    product.delete()
    response = admin_client.get(EVENTS, {"pgh_obj__exact": pk})
    assert response.status_code == 200
    rows = list(response.context["cl"].result_list)
    assert [event.pgh_label for event in rows] == ["before_delete", "snapshot"]
    assert f"{pk} (deleted)" in response.content.decode()


def test_event_changelist_runs_the_same_queries_for_100_rows_as_for_2(
    admin_client, django_assert_max_num_queries
):
    """A page of 100 events with their contexts and objects costs a constant number of queries."""
    _products(2, "small")
    with CaptureQueriesContext(connection) as few:
        assert admin_client.get(EVENTS).status_code == 200
    _products(98, "big")
    with django_assert_max_num_queries(len(few.captured_queries)):
        response = admin_client.get(EVENTS)
    assert len(response.context["cl"].result_list) == 100
    assert all(event._pgh_obj_found is not None for event in response.context["cl"].result_list)


def test_history_changelists_never_read_distinct_values_for_their_filters(admin_client):
    """The sidebar's choices come from the declared models and labels, not SELECT DISTINCT."""
    _products(3)
    for url in (EVENTS, CHANGES, reverse("admin:audit_stream_rowlog_changelist")):
        with CaptureQueriesContext(connection) as queries:
            response = admin_client.get(url)
        assert response.status_code == 200
        assert not [q["sql"] for q in queries.captured_queries if "DISTINCT" in q["sql"].upper()], url
    assert "testapp.product" in admin_client.get(CHANGES).content.decode()


def test_change_changelist_filters_by_a_declared_model(admin_client):
    """The model filter still filters."""
    _change(1, "testapp.product", "1")
    _change(2, "testapp.order", "1")
    response = admin_client.get(CHANGES, {"model": "testapp.order"})
    assert [c.model for c in response.context["cl"].result_list] == ["testapp.order"]


def test_counts_past_the_exact_limit_are_estimated_not_counted(admin_client, monkeypatch):
    """Beyond EXACT_COUNT rows, the paginator reads no more rows than that to count."""
    monkeypatch.setattr(changelists, "EXACT_COUNT", 3)
    _products(6)
    with CaptureQueriesContext(connection) as queries:
        response = admin_client.get(EVENTS)
    assert response.status_code == 200
    assert any("LIMIT 4" in q["sql"] for q in queries.captured_queries)
    assert any(q["sql"].startswith("EXPLAIN") for q in queries.captured_queries)
    assert response.context["cl"].result_count >= 4


def test_change_search_finds_an_object_by_its_exact_id(admin_client):
    """Searching the change feed by object id looks it up in every tracked model."""
    product = Product.objects.create(name="findme")
    _change(1, "testapp.product", str(product.pk))
    response = admin_client.get(CHANGES, {"q": str(product.pk)})
    assert [c.object_id for c in response.context["cl"].result_list] == [str(product.pk)]


def _table_reads(table: str) -> tuple[int, int]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT coalesce(seq_tup_read, 0), coalesce(idx_tup_fetch, 0)"
            " FROM pg_stat_xact_user_tables WHERE relname = %s",
            [table],
        )
        return cursor.fetchone()


def test_deleted_objects_are_found_newest_first_without_reading_the_history():
    """The deleted-objects page walks back from the newest delete, not over every event."""
    from audit_stream.admin.deleted import deleted_events
    from tests.testapp.models import ProductEvent

    with connection.cursor() as cursor:  # 20,000 products, one statement (one event each)
        cursor.execute("INSERT INTO testapp_product (name, price, stock, updated_at)"
                       " SELECT 'p' || g, 1, 0, now() FROM generate_series(1, 20000) AS g")  # fmt: skip
    for name in ("p10", "p20", "p30"):
        Product.objects.get(name=name).delete()
    before = _table_reads("testapp_productevent")  # one transaction (the test's): counters not flushed
    found = deleted_events(ProductEvent, Product, limit=2)
    seq_read, fetched = (
        after - b for after, b in zip(_table_reads("testapp_productevent"), before, strict=True)
    )
    assert [event.name for event in found] == ["p30", "p20"]
    assert seq_read == 0 and fetched <= 1_010  # the first window of ids, not the 20,003 events
