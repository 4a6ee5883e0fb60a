"""AggregateEvent: one object's history across event tables, with diffs, as a QuerySet."""

from decimal import Decimal

import pytest

import audit_stream
from audit_stream.models import AggregateEvent, Change
from audit_stream.stream import fold
from tests.testapp.models import PriceChange, Product, ProductEvent

pytestmark = pytest.mark.django_db


@pytest.fixture
def product():
    with audit_stream.context(user=7):
        product = Product.objects.create(name="lamp", price=1)
    Product.objects.filter(pk=product.pk).update(price=2)
    Product.objects.filter(pk=product.pk).update(name="lamp 2")
    Product.objects.create(name="other")
    return product


def test_target_returns_the_objects_events_across_tables_in_order(product):
    rows = list(AggregateEvent.objects.target(product))
    assert [(r.pgh_table, r.pgh_label) for r in rows] == [
        ("testapp_productevent", "snapshot"),
        ("testapp_pricechange", "price_changed"),
        ("testapp_productevent", "snapshot"),
        ("testapp_productevent", "snapshot"),
    ]
    assert {r.pgh_obj_id for r in rows} == {str(product.pk)}


def test_across_restricts_the_event_models(product):
    assert AggregateEvent.objects.target(product).across(PriceChange).count() == 1


def test_diffs_against_the_previous_event_of_the_same_table(product):
    diffs = [r.pgh_diff for r in AggregateEvent.objects.target(product).across(ProductEvent)]
    assert diffs[0]["name"] == [None, "lamp"]
    assert diffs[1] == {"price": [1, 2]} or diffs[1] == {"price": [Decimal(1), Decimal(2)]}
    assert diffs[2] == {"name": ["lamp", "lamp 2"]}


@pytest.mark.django_db(transaction=True)
def test_diffs_match_the_change_feed(product):
    fold.fold_all()
    aggregate = {r.pgh_id: r.pgh_diff for r in AggregateEvent.objects.target(product).across(ProductEvent)}
    changes = {
        c.event_id: c.diff
        for c in Change.objects.for_object(product).filter(event_table="testapp_productevent")
    }
    assert aggregate == changes


def test_filter_by_context_metadata(product):
    rows = AggregateEvent.objects.target(product).filter(pgh_context__metadata__user=7)
    assert [r.pgh_label for r in rows] == ["snapshot"]


def test_slicing_counting_and_ordering(product):
    qs = AggregateEvent.objects.target(product).order_by("-pgh_created_at", "-pgh_id")
    assert qs.count() == 4
    assert len(qs[:2]) == 2
    assert qs.filter(pgh_label="price_changed").exists()


def test_a_deleted_objects_history_remains(product):
    pk = product.pk
    product.delete()
    rows = AggregateEvent.objects.target_pk(Product, pk)
    assert rows.last().pgh_label == "before_delete"


def test_without_target_every_event_is_included(product):
    from audit_stream import tracking

    assert AggregateEvent.objects.count() == sum(m.objects.count() for m in tracking._event_models.values())


def test_one_objects_history_is_an_index_scan_per_table(product):
    from django.db import connection

    Product.objects.bulk_create([Product(name=f"p{i}") for i in range(3000)])
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE testapp_productevent")
        cursor.execute("ANALYZE testapp_pricechange")
        sql, params = AggregateEvent.objects.target(product).query.sql_with_params()
        cursor.execute("EXPLAIN " + sql, params)
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert "Seq Scan on testapp_productevent" not in plan, plan
    assert "productevent_" in plan and "_obj" in plan, plan
