"""What undo refuses, each with a message that names the object and the reason; nothing is changed."""

from __future__ import annotations

import io
from decimal import Decimal

import pytest
from django.core.management import call_command

import audit_stream
from audit_stream.history.undo import UndoError, undo
from tests.testapp.models import Customer, Label, Locker, Note, Order, Product, ProductEvent, Supplier

pytestmark = pytest.mark.django_db


@pytest.fixture
def logged():
    """Every table of the test app that is not tracked, logged by initlogging."""
    call_command("initlogging", stdout=io.StringIO(), stderr=io.StringIO())


@pytest.fixture
def widgets(sql):
    """A table with no model, logged by initlogging: its schema can change under the row log."""
    sql("CREATE TABLE undo_widget (id bigint PRIMARY KEY, name text UNIQUE, size int NOT NULL DEFAULT 0)")
    call_command("initlogging", "--table", "undo_widget", stdout=io.StringIO(), stderr=io.StringIO())
    sql("INSERT INTO undo_widget VALUES (1, 'bolt', 3), (2, 'nut', 5)")


def _refused(target, **options) -> UndoError:
    with pytest.raises(UndoError) as error:
        undo(target, **options)
    return error.value


# --- event models that do not record every field or every change --------------------------------


def test_a_model_whose_history_leaves_out_fields_is_refused_by_name():
    """exclude=/fields=: the undo is refused, naming the model and the fields it does not record."""
    locker = Locker.objects.create(code="A1", place="hall", secret="x")
    with audit_stream.context() as ctx:
        Locker.objects.filter(pk=locker.pk).update(place="cellar", secret="y")
    error = _refused(ctx.id)
    assert "testapp.locker: testapp.LockerEvent does not record secret (fields=/exclude=)" in str(error)
    assert "partial=True" in str(error)
    locker.refresh_from_db()
    assert (locker.place, locker.secret) == ("cellar", "y")


def test_a_partial_undo_puts_back_only_the_recorded_fields():
    """partial=True: recorded fields go back, the others keep their value, and the context says partial."""
    locker = Locker.objects.create(code="A1", place="hall", secret="x")
    with audit_stream.context() as ctx:
        Locker.objects.filter(pk=locker.pk).update(place="cellar", secret="y")
    plan = undo(ctx.id, partial=True)
    locker.refresh_from_db()
    assert (locker.place, locker.secret) == ("hall", "y")
    from audit_stream.models import Context

    assert Context.objects.get(pk=plan.context_id).metadata["undo_partial"] is True


def test_a_partial_undo_still_refuses_to_re_create_an_object_missing_fields():
    """A deleted object whose history lacks fields cannot be re-created, even in a partial undo."""
    locker = Locker.objects.create(code="A1", place="hall", secret="x")
    pk = locker.pk
    with audit_stream.context() as ctx:
        locker.delete()
    error = _refused(ctx.id, partial=True)
    assert f"testapp.locker {pk}: cannot be re-created: its history does not record secret" in str(error)
    assert not Locker.objects.exists()


def test_a_model_with_only_conditional_events_is_refused_by_name():
    """LabelEvent records only conditional renames: the state before a change is unknown, refused."""
    label = Label.objects.create(code="red", text="Red")
    with audit_stream.context() as ctx:
        Label.objects.filter(pk=label.pk).update(text="Crimson")
    error = _refused(ctx.id)
    assert "testapp.label: testapp.LabelEvent does not record every insert, update, delete" in str(error)
    assert Label.objects.get().text == "Crimson"


def test_a_partial_undo_uses_the_before_state_a_conditional_event_kept():
    """partial=True: a conditional OLD snapshot ('renamed') is the state to go back to."""
    label = Label.objects.create(code="red", text="Red")
    with audit_stream.context() as ctx:
        Label.objects.filter(pk=label.pk).update(text="Crimson")
        Label.objects.filter(pk=label.pk).update(text="Scarlet")
    undo(ctx.id, partial=True)
    assert Label.objects.get().text == "Red"


def test_a_model_whose_history_has_no_object_or_context_is_refused_by_name():
    """NoteEvent has no pgh_obj and no pgh_context: its changes in the context's transaction are refused."""
    with audit_stream.context() as ctx:
        Product.objects.create(name="lamp", price=1)
        Note.objects.create(title="t")
    error = _refused(ctx.id)
    assert "testapp.note: testapp.NoteEvent records no context" in str(error)
    assert Product.objects.exists()


def test_an_object_whose_history_begins_with_an_update_is_refused(logged, sql):
    """An order written before tracking began (no insert event): its state before the change is unknown."""
    customer = Customer.objects.create(email="ada@example.com", name="Ada")
    sql("SET session_replication_role = replica")  # no triggers: as if tracking started later
    sql("INSERT INTO testapp_order (customer_id, status, note) VALUES (%s, 'new', '')", [customer.pk])
    sql("SET session_replication_role = origin")
    order = Order.objects.get()
    with audit_stream.context() as ctx:
        Order.objects.filter(pk=order.pk).update(status="paid")
    error = _refused(ctx.id)
    assert f"testapp.order {order.pk}: no state is recorded before the change to undo" in str(error)
    assert Order.objects.get().status == "paid"


def test_a_field_without_a_recorded_value_is_refused(sql):
    """A field NOT NULL now but recorded as NULL (nullable then) cannot be put back."""
    lamp = Product.objects.create(name="lamp", price=1)
    event = ProductEvent.objects.filter(pgh_obj_id=lamp.pk).latest("pgh_id")
    sql("ALTER TABLE testapp_productevent ALTER COLUMN stock DROP NOT NULL")  # as when it was nullable
    sql(
        "INSERT INTO testapp_productevent (pgh_created_at, pgh_label, pgh_xid, pgh_obj_id, id, name, price,"
        " stock, updated_at) VALUES (now(), 'snapshot', %s, %s, %s, 'lamp', 1, NULL, now())",
        [event.pgh_xid, lamp.pk, lamp.pk],
    )
    with audit_stream.context() as ctx:
        Product.objects.filter(pk=lamp.pk).update(price=2)
    error = _refused(ctx.id)
    assert f"testapp.product {lamp.pk}: no value is recorded for stock" in str(error)


# --- unique constraints --------------------------------------------------------------------------


def test_a_restore_whose_unique_value_was_reused_is_refused_with_the_constraint_and_rows():
    """The deleted product's name now belongs to another product: refused, naming both and the constraint."""
    lamp = Product.objects.create(name="lamp", price=1)
    pk = lamp.pk
    with audit_stream.context() as ctx:
        lamp.delete()
    other = Product.objects.create(name="lamp", price=2)
    error = _refused(ctx.id)
    assert (
        f"testapp.product {pk}: cannot put back name='lamp': unique constraint"
        f" testapp_product_name_key is now used by testapp.product {other.pk}"
    ) in str(error)
    assert list(Product.objects.values_list("pk", flat=True)) == [other.pk]


def test_a_unique_value_reused_in_a_logged_table_is_refused_too(logged):
    """The same check for tables logged by initlogging."""
    acme = Supplier.objects.create(name="Acme")
    with audit_stream.context() as ctx:
        Supplier.objects.filter(pk=acme.pk).update(name="Acme Ltd")
    Supplier.objects.create(name="Acme")
    error = _refused(ctx.id)
    assert f"testapp.supplier {acme.pk}: cannot put back name='Acme': unique constraint" in str(error)


def test_a_unique_value_freed_by_the_undo_itself_is_not_a_collision():
    """Renaming a back to its old name, which the undo frees by deleting b, is allowed."""
    a = Product.objects.create(name="lamp", price=1)
    with audit_stream.context() as ctx:
        Product.objects.filter(pk=a.pk).update(name="old lamp")
        Product.objects.create(name="lamp", price=2)
    undo(ctx.id)
    assert list(Product.objects.values_list("pk", "name")) == [(a.pk, "lamp")]


def test_a_row_that_now_references_a_created_object_makes_the_delete_fail_cleanly(logged):
    """Deleting a created customer that a later order points to: the database's refusal is reported."""
    with audit_stream.context() as ctx:
        customer = Customer.objects.create(email="ada@example.com", name="Ada")
    Order.objects.create(customer=customer)
    with pytest.raises(UndoError, match="violates foreign key constraint") as error:
        undo(ctx.id)
    assert "Nothing was changed" in str(error.value)
    assert Customer.objects.filter(pk=customer.pk).exists()


# --- schema changes since the context (row log) --------------------------------------------------


def _widgets(sql):
    return sql("SELECT * FROM undo_widget ORDER BY id")


def test_a_table_renamed_since_is_followed_through_the_ddl_log(widgets, sql):
    """The table was renamed after the context: the undo writes to it under its new name."""
    with audit_stream.context() as ctx:
        sql("UPDATE undo_widget SET size = 9 WHERE id = 1")
        sql("DELETE FROM undo_widget WHERE id = 2")
    sql("ALTER TABLE undo_widget RENAME TO undo_gadget")
    undo(ctx.id)
    assert sql("SELECT * FROM undo_gadget ORDER BY id") == [(1, "bolt", 3), (2, "nut", 5)]


def test_a_column_renamed_since_is_mapped_to_its_new_name(widgets, sql):
    """A renamed column gets its old value back under its new name."""
    with audit_stream.context() as ctx:
        sql("DELETE FROM undo_widget WHERE id = 2")
    sql("ALTER TABLE undo_widget RENAME COLUMN size TO width")
    undo(ctx.id)
    assert sql("SELECT id, name, width FROM undo_widget ORDER BY id") == [(1, "bolt", 3), (2, "nut", 5)]


def test_a_column_dropped_since_is_refused_with_the_reason(widgets, sql):
    """The recorded state has a column the table no longer has: refused, naming it."""
    with audit_stream.context() as ctx:
        sql("DELETE FROM undo_widget WHERE id = 2")
    sql("ALTER TABLE undo_widget DROP COLUMN size")
    error = _refused(ctx.id)
    assert "public.undo_widget 2: column(s) size of public.undo_widget were dropped since the change" in str(
        error
    )


def test_a_not_null_column_added_since_is_refused_for_a_restore(widgets, sql):
    """A NOT NULL column without default added after the context: the row cannot be re-created."""
    with audit_stream.context() as ctx:
        sql("DELETE FROM undo_widget WHERE id = 2")
    sql("ALTER TABLE undo_widget ADD COLUMN colour text NOT NULL DEFAULT 'grey'")
    sql("ALTER TABLE undo_widget ALTER COLUMN colour DROP DEFAULT")
    error = _refused(ctx.id)
    assert "column(s) colour were added to public.undo_widget since the change, NOT NULL" in str(error)


def test_a_column_added_since_with_a_default_is_no_obstacle(widgets, sql):
    """A column added later with a default: the undo of an update leaves its value alone."""
    with audit_stream.context() as ctx:
        sql("UPDATE undo_widget SET size = 9 WHERE id = 1")
    sql("ALTER TABLE undo_widget ADD COLUMN colour text NOT NULL DEFAULT 'grey'")
    undo(ctx.id)
    assert _widgets(sql) == [(1, "bolt", 3, "grey"), (2, "nut", 5, "grey")]


def test_a_restore_gives_a_column_added_since_its_default(widgets, sql):
    """A re-created row gets the default of a column that did not exist when it was deleted."""
    with audit_stream.context() as ctx:
        sql("DELETE FROM undo_widget WHERE id = 2")
    sql("ALTER TABLE undo_widget ADD COLUMN colour text NOT NULL DEFAULT 'grey'")
    undo(ctx.id)
    assert _widgets(sql) == [(1, "bolt", 3, "grey"), (2, "nut", 5, "grey")]


def test_a_table_dropped_since_is_refused_with_the_reason(widgets, sql):
    """The table is gone: refused, saying so."""
    with audit_stream.context() as ctx:
        sql("UPDATE undo_widget SET size = 9 WHERE id = 1")
    sql("DROP TABLE undo_widget")
    error = _refused(ctx.id)
    assert "public.undo_widget: the table public.undo_widget no longer exists" in str(error)


def test_a_table_without_a_model_is_undone_from_the_row_log(widgets, sql):
    """Logged tables need no Django model."""
    with audit_stream.context() as ctx:
        sql("INSERT INTO undo_widget VALUES (3, 'screw', 1)")
        sql("UPDATE undo_widget SET name = 'big bolt', size = 4 WHERE id = 1")
    undo(ctx.id)
    assert _widgets(sql) == [(1, "bolt", 3), (2, "nut", 5)]


def test_every_refusal_is_listed_and_nothing_is_changed(logged):
    """Several problems at once: all listed, nothing written."""
    lamp = Product.objects.create(name="lamp", price=Decimal(1))
    locker = Locker.objects.create(code="A1")
    with audit_stream.context() as ctx:
        Product.objects.filter(pk=lamp.pk).update(price=5)
        Locker.objects.filter(pk=locker.pk).update(place="x")
    Product.objects.filter(pk=lamp.pk).update(stock=1)
    error = _refused(ctx.id)
    message = str(error)
    assert "testapp.locker:" in message and f"testapp.product {lamp.pk}: changed after it" in message
    lamp.refresh_from_db()
    assert lamp.price == 5
