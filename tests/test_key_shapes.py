"""Every key shape: composite primary keys (Django 5.2), UUID keys in custom columns, tables whose
names have spaces and capitals: history, the feed, AggregateEvent and revert name each object right."""

import pgtrigger
import pytest
from django.core.management import call_command
from django.db import connection, models

import audit_stream
from audit_stream import keys, registry
from audit_stream.models import AggregateEvent, Change, Event
from audit_stream.revert import restore, revert
from audit_stream.stream import fold
from tests.testapp.models import Customer, Gadget, GadgetEvent, Label, Order, OrderLine, OrderLineEvent

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def line():
    order = Order.objects.create(customer=Customer.objects.create(email="a@example.com", name="A"))
    return OrderLine.objects.create(order=order, line="A 1", quantity=2)


def test_a_composite_key_names_every_key_column_in_the_object_id(line):
    """The event's pgh_obj_id and the change's object_id are the key as a JSON object of its columns."""
    fold.fold_all()
    expected = f'{{"Line No": "A 1", "Order Ref": {line.order_id}}}'
    assert OrderLineEvent.objects.get().pgh_obj_id == expected
    assert Change.objects.get(model="testapp.orderline").object_id == expected
    assert keys.object_id(OrderLine, line.pk) == expected
    assert keys.parse(OrderLine, expected) == line.pk


def test_the_history_of_a_composite_key_object_is_found_from_the_object(line):
    """for_object(), AggregateEvent.target() and conditions that join OLD and NEW rows all work."""
    OrderLine.objects.filter(pk=line.pk).update(quantity=3)
    other = OrderLine.objects.create(order=line.order, line="A 2")
    fold.fold_all()
    assert [c.label for c in Change.objects.for_object(line)] == ["snapshot", "quantity_changed", "snapshot"]
    assert [c.label for c in Change.objects.for_object(other)] == ["snapshot"]
    diffs = [(e.pgh_label, e.pgh_diff) for e in AggregateEvent.objects.target(line)]
    assert diffs[1:] == [("quantity_changed", {"quantity": [2, 3]}), ("snapshot", {})]


def test_a_composite_key_object_can_be_reverted_and_restored(line):
    first = OrderLineEvent.objects.get(pgh_label="snapshot")
    OrderLine.objects.filter(pk=line.pk).update(quantity=9)
    assert revert(first).quantity == 2
    last = OrderLineEvent.objects.filter(pgh_label="snapshot").latest("pgh_id")
    line.delete()
    restored = restore(last)
    assert OrderLine.objects.get(pk=restored.pk).quantity == 2


def test_a_foreign_key_to_a_composite_key_is_refused_at_check_time_with_what_to_declare():
    """Django cannot point a foreign key at a composite key: the check says to leave obj_fk out."""
    before = len(registry.problems)
    audit_stream.get_event_model(
        OrderLine,
        audit_stream.Snapshot(),
        obj_fk=models.ForeignKey(OrderLine, on_delete=models.DO_NOTHING),
        name="OrderLineWithFkEvent",
    )
    try:
        (problem,) = registry.problems[before:]
        _label, message, hint, check_id = problem
        assert check_id == "audit_stream.E008"
        assert "composite primary key" in message
        assert "Leave obj_fk out" in hint
    finally:
        del registry.problems[before:]


def test_makemigrations_and_check_pass_for_composite_keys():
    """No traceback: the triggers of a composite-key model compile (they were crashing in quote_name)."""
    call_command("check")
    call_command("makemigrations", "testapp", "--check", "--dry-run", verbosity=0)
    assert issubclass(OrderLineEvent, Event)


def test_a_uuid_key_in_a_custom_column_of_a_capitalised_table_is_tracked():
    gadget = Gadget.objects.create(name="widget")
    Gadget.objects.filter(pk=gadget.pk).update(name="sprocket")
    fold.fold_all()
    assert [c.object_id for c in Change.objects.for_object(gadget)] == [str(gadget.pk)] * 2
    assert Change.objects.for_object(gadget).last().diff == {"Name": ["widget", "sprocket"]}
    assert [e.pgh_diff for e in AggregateEvent.objects.target(gadget)][-1] == {"Name": ["widget", "sprocket"]}
    assert revert(GadgetEvent.objects.earliest("pgh_id")).name == "widget"
    with connection.cursor() as cursor:
        cursor.execute('SELECT "Name" FROM "Gadget Stock"')
        assert cursor.fetchone() == ("widget",)


def test_a_char_key_is_tracked():
    label = Label.objects.create(code="sku-1", text="old")
    Label.objects.filter(pk="sku-1").update(text="new")
    fold.fold_all()
    (change,) = Change.objects.for_object(label)
    assert (change.object_id, change.label, change.snapshot["text"]) == ("sku-1", "renamed", "old")


def test_the_history_of_a_composite_key_object_can_be_erased_by_its_object_id(line):
    """Right to erasure: the object id from the feed names the object; a bad one gets a clear error."""
    from audit_stream import retention

    other = OrderLine.objects.create(order=line.order, line="A 2")
    fold.fold_all()
    retention.erase("testapp.OrderLine", keys.object_id(OrderLine, line.pk))
    assert not Change.objects.for_object(line).exists()
    assert not OrderLineEvent.objects.filter(pgh_obj_id=keys.object_id(OrderLine, line.pk)).exists()
    assert Change.objects.for_object(other).exists()
    with pytest.raises(ValueError, match="JSON object of every key column"):
        retention.erase("testapp.OrderLine", "42")


def test_a_composite_key_model_tracked_without_obj_fk_compiles_its_triggers():
    """track(obj_fk=None) on a composite key used to crash makemigrations in triggers.quote_name."""
    event = audit_stream.AfterUpdate(
        "moved", condition=pgtrigger.Q(old__quantity__df=pgtrigger.F("new__quantity"))
    )
    model = audit_stream.get_event_model(OrderLine, event, obj_fk=None, name="OrderLineNoObjEvent")
    model._pgh_key = "abc123"  # (set on concrete event models when they are prepared)
    (trigger,) = event.get_triggers(model)
    sql = trigger.compile(OrderLine).sql.kwargs["func"]
    assert 'ON _old."Order Ref" = _new."Order Ref" AND _old."Line No" = _new."Line No"' in sql
    assert "pgh_obj_id" not in sql
