"""Each event class records the right row at the right time."""

from decimal import Decimal

import pytest
from django.db import transaction

import audit_stream
from tests.testapp.models import Customer, Label, LabelEvent, Order, OrderEvent, Product, ProductEvent

pytestmark = pytest.mark.django_db


@pytest.fixture
def customer():
    return Customer.objects.create(email="ada@example.com", name="Ada")


def test_snapshot_records_an_insert(events):
    """Snapshot stores the new row of an insert."""
    product = Product.objects.create(name="lamp", price=10)
    assert events(ProductEvent, "pgh_obj_id", "name", "price") == [
        ("snapshot", product.pk, "lamp", Decimal("10.00"))
    ]


def test_snapshot_records_an_update_that_changes_a_tracked_field(events):
    """Snapshot stores the new row when a tracked field changed."""
    product = Product.objects.create(name="lamp", price=10)
    Product.objects.filter(pk=product.pk).update(price=12)
    assert events(ProductEvent, "price") == [("snapshot", Decimal("10.00")), ("snapshot", Decimal("12.00"))]


def test_snapshot_ignores_an_update_that_changes_nothing(events):
    """An update writing the same values records no event."""
    product = Product.objects.create(name="lamp", price=10)
    Product.objects.filter(pk=product.pk).update(price=10, name="lamp")
    assert len(events(ProductEvent)) == 1


def test_after_insert_stores_the_new_row(events, customer):
    order = Order.objects.create(customer=customer, status="new")
    assert ("after_insert", order.pk, "new") in events(OrderEvent, "pgh_obj_id", "status")


def test_after_update_stores_the_new_row(events, customer):
    order = Order.objects.create(customer=customer, status="new")
    Order.objects.filter(pk=order.pk).update(status="paid")
    assert [row for row in events(OrderEvent, "status") if row[0] == "after_update"] == [
        ("after_update", "paid")
    ]


def test_before_update_stores_the_old_row(events, customer):
    order = Order.objects.create(customer=customer, status="new")
    Order.objects.filter(pk=order.pk).update(status="paid")
    assert [row for row in events(OrderEvent, "status") if row[0] == "before_update"] == [
        ("before_update", "new")
    ]


def test_before_delete_stores_the_old_row(events, customer):
    order = Order.objects.create(customer=customer, status="shipped")
    pk = order.pk
    order.delete()
    assert [row for row in events(OrderEvent, "pgh_obj_id", "status") if row[0] == "before_delete"] == [
        ("before_delete", pk, "shipped")
    ]


def test_after_insert_or_update_records_both(events, customer):
    order = Order.objects.create(customer=customer, status="new")
    order.status = "paid"
    order.save()
    assert [row for row in events(OrderEvent, "status") if row[0] == "after_insert_or_update"] == [
        ("after_insert_or_update", "new"),
        ("after_insert_or_update", "paid"),
    ]


def test_after_update_fires_without_a_change(events, customer):
    """Without a condition, AfterUpdate records every update, changed or not."""
    order = Order.objects.create(customer=customer, status="new")
    order.save()
    assert [row[0] for row in events(OrderEvent) if row[0] == "after_update"] == ["after_update"]


def test_database_event_with_old_snapshot_and_condition(events):
    """DatabaseEvent(label, when, condition, operation, snapshot) as declared on LabelEvent."""
    label = Label.objects.create(code="red", text="Red")
    Label.objects.filter(pk="red").update(text="Crimson")
    Label.objects.filter(pk="red").update(text="Crimson")  # no change: condition false
    assert events(LabelEvent, "pgh_obj_id", "text") == [("renamed", "red", "Red")]
    assert label.event.count() == 1


def test_events_of_one_statement_share_a_timestamp_and_keep_row_order(events):
    Product.objects.bulk_create([Product(name=f"p{i}") for i in range(5)])
    rows = list(ProductEvent.objects.order_by("pgh_id").values_list("name", "pgh_created_at"))
    assert [name for name, _ in rows] == [f"p{i}" for i in range(5)]
    assert len({created for _, created in rows}) == 1


def test_events_of_one_transaction_share_the_transactions_start_time(events, sql):
    """pgh_created_at is now(), as in django-pghistory: one time for every statement of a transaction."""
    with transaction.atomic():
        Product.objects.create(name="a")
        sql("SELECT pg_sleep(0.002)")  # statement_timestamp() would now differ
        Product.objects.filter(name="a").update(price=2)
        Customer.objects.create(email="b@example.com", name="B").orders.create()
        ((now,),) = sql("SELECT now()")
    times = {*ProductEvent.objects.values_list("pgh_created_at", flat=True)}
    times |= {*OrderEvent.objects.values_list("pgh_created_at", flat=True)}
    assert times == {now}


@pytest.mark.parametrize("event_class", [audit_stream.Event, audit_stream.DatabaseEvent])
def test_an_event_without_a_label_names_the_label_attribute(event_class):
    """The message django-pghistory users match: "Must supply label attribute to event"."""
    with pytest.raises(ValueError, match="Must supply label attribute to event"):
        event_class()
