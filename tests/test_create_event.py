"""Manual events: create_event(obj, label=...)."""

import pytest

import audit_stream
from audit_stream.models import Context
from tests.testapp.models import Customer, Order, OrderEvent, Product

pytestmark = pytest.mark.django_db


@pytest.fixture
def order():
    return Order.objects.create(
        customer=Customer.objects.create(email="a@example.com", name="A"), status="paid"
    )


def test_create_event_stores_the_current_values(order):
    event = audit_stream.create_event(order, label="shipped")
    stored = OrderEvent.objects.get(pgh_id=event.pgh_id)
    assert (stored.pgh_label, stored.pgh_obj_id, stored.status) == ("shipped", order.pk, "paid")
    assert stored.pgh_created_at is not None


def test_create_event_attaches_the_active_context(order):
    with audit_stream.context(user="ops") as ctx:
        event = audit_stream.create_event(order, label="shipped")
    assert OrderEvent.objects.get(pgh_id=event.pgh_id).pgh_context_id == ctx.id
    assert Context.objects.get(pk=ctx.id).metadata == {"user": "ops"}


def test_create_event_refuses_an_unregistered_label(order):
    with pytest.raises(ValueError, match=r'"lost" is not a registered event for model Order') as info:
        audit_stream.create_event(order, label="lost")
    assert "shipped" in str(info.value)
    assert not OrderEvent.objects.filter(pgh_label="lost").exists()


def test_create_event_refuses_a_label_of_another_model():
    product = Product.objects.create(name="p")
    with pytest.raises(
        ValueError, match=r'"shipped" is not a registered event for model Product \(testapp\.Product\)'
    ):
        audit_stream.create_event(product, label="shipped")
