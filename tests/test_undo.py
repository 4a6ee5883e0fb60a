"""Undo of a context or a transaction: ``audit_stream.undo`` and ``audit_stream.undo_transaction``."""

from __future__ import annotations

import io
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.db import connection

import audit_stream
from audit_stream.history.undo import UndoError, undo, undo_transaction
from audit_stream.models import Context, RowLog
from tests.testapp.models import Customer, Order, OrderEvent, Product, ProductEvent, Supplier

pytestmark = pytest.mark.django_db


@pytest.fixture
def logged():
    """Customer and Supplier logged schema-wide by initlogging (the row log)."""
    call_command("initlogging", stdout=io.StringIO(), stderr=io.StringIO())


def _context(**metadata):
    """Run the block in a context and give back its Context row (after the block)."""
    return audit_stream.context(**metadata)


def _state(model):
    return sorted(model.objects.values_list(*[f.attname for f in model._meta.concrete_fields]))


def _product_state():
    return sorted(Product.objects.values_list("id", "name", "price", "stock"))


def test_undo_deletes_what_the_context_created():
    """Objects the context created are deleted."""
    kept = Product.objects.create(name="kept", price=1)
    with _context(reason="import") as ctx:
        Product.objects.create(name="lamp", price=10)
        Product.objects.bulk_create([Product(name=f"p{i}", price=i) for i in range(3)])
    plan = undo(ctx.id)
    assert list(Product.objects.values_list("pk", flat=True)) == [kept.pk]
    assert plan.counts()["delete"] == 4


def test_undo_restores_what_the_context_deleted_with_its_primary_key():
    """Objects the context deleted come back with their primary keys and values."""
    lamp = Product.objects.create(name="lamp", price=Decimal("10.50"), stock=3)
    before = _product_state()
    with _context() as ctx:
        Product.objects.filter(pk=lamp.pk).delete()
    undo(ctx.id)
    assert _product_state() == before


def test_undo_puts_back_the_previous_values_of_what_the_context_updated():
    """Objects the context updated get the values they had before its first change."""
    lamp = Product.objects.create(name="lamp", price=10, stock=1)
    desk = Product.objects.create(name="desk", price=20, stock=2)
    before = _product_state()
    with _context() as ctx:
        Product.objects.filter(pk=lamp.pk).update(price=11)
        Product.objects.filter(pk=lamp.pk).update(price=12, stock=5)
        Product.objects.update(stock=9)
    Product.objects.filter(pk=desk.pk)  # untouched after
    undo(ctx.id)
    assert _product_state() == before


def test_an_object_created_and_deleted_inside_the_context_needs_nothing():
    """Created then deleted by the context: nothing to put back."""
    with _context() as ctx:
        lamp = Product.objects.create(name="lamp", price=10)
        lamp.delete()
    plan = undo(ctx.id)
    assert [s.action for s in plan.steps] == ["nothing"]
    assert plan.context_id is None


def test_the_undo_is_recorded_in_a_new_context_naming_what_it_undid():
    """The undo runs in its own context, whose metadata names the undone context."""
    with _context() as ctx:
        lamp = Product.objects.create(name="lamp", price=10)
    plan = undo(ctx.id)
    undo_context = Context.objects.get(pk=plan.context_id)
    assert undo_context.metadata == {"undo_of": [str(ctx.id)]}
    delete = ProductEvent.objects.get(pgh_obj_id=lamp.pk, pgh_label="before_delete")
    assert delete.pgh_context_id == plan.context_id


def test_an_undo_inside_a_request_context_keeps_who_asked_in_its_own_context():
    """Inside another context (a request), the undo gets its own context with the request's metadata."""
    with _context() as ctx:
        Product.objects.create(name="lamp", price=10)
    with _context(user=7, url="/admin/") as request:
        plan = undo(ctx.id)
    assert plan.context_id != request.id
    assert Context.objects.get(pk=plan.context_id).metadata == {
        "user": 7,
        "url": "/admin/",
        "undo_of": [str(ctx.id)],
    }


def test_an_undo_can_itself_be_undone():
    """Undoing the undo brings the context's changes back."""
    with _context() as ctx:
        lamp = Product.objects.create(name="lamp", price=10)
        Product.objects.create(name="desk", price=20)
    after = _product_state()
    first = undo(ctx.id)
    assert not Product.objects.filter(pk=lamp.pk).exists()
    undo(first.context_id)
    assert _product_state() == after


def test_dry_run_returns_the_plan_object_by_object_and_changes_nothing():
    """A dry run lists each object and action, and writes nothing (no event, no context)."""
    lamp = Product.objects.create(name="lamp", price=10)
    with _context() as ctx:
        Product.objects.filter(pk=lamp.pk).update(price=12)
        desk = Product.objects.create(name="desk", price=20)
    state, events, contexts = _product_state(), ProductEvent.objects.count(), Context.objects.count()
    plan = undo(ctx.id, dry_run=True)
    assert {(s.model, s.object_id, s.action) for s in plan.steps} == {
        ("testapp.product", str(lamp.pk), "update"),
        ("testapp.product", str(desk.pk), "delete"),
    }
    update = next(s for s in plan.steps if s.action == "update")
    assert ("price", Decimal("12.00"), Decimal("10.00")) in update.changes
    assert (_product_state(), ProductEvent.objects.count(), Context.objects.count()) == (
        state,
        events,
        contexts,
    )


def test_conflicts_are_refused_listing_each_object_and_change():
    """An object changed after the context by someone else: nothing is changed, the error says which."""
    lamp = Product.objects.create(name="lamp", price=10)
    desk = Product.objects.create(name="desk", price=20)
    with _context() as ctx:
        Product.objects.update(price=99)
    with _context(user=3) as later:
        Product.objects.filter(pk=lamp.pk).update(stock=4)
    state = _product_state()
    with pytest.raises(UndoError) as error:
        undo(ctx.id)
    assert _product_state() == state
    [conflict] = error.value.plan.conflicts
    assert (conflict.model, conflict.object_id, conflict.context_id) == (
        "testapp.product",
        str(lamp.pk),
        str(later.id),
    )
    message = str(error.value)
    assert f"testapp.product {lamp.pk}: changed after it by testapp_productevent:" in message
    assert "force=True" in message
    assert f"testapp.product {desk.pk}:" not in message


def test_force_overwrites_conflicts_and_the_new_context_says_so():
    """With force, later changes are overwritten and the undo's context records which."""
    lamp = Product.objects.create(name="lamp", price=10, stock=1)
    with _context() as ctx:
        Product.objects.filter(pk=lamp.pk).update(price=99)
    Product.objects.filter(pk=lamp.pk).update(stock=4)
    later = ProductEvent.objects.filter(pgh_obj_id=lamp.pk).latest("pgh_id")
    plan = undo(ctx.id, force=True)
    lamp.refresh_from_db()
    assert (lamp.price, lamp.stock) == (10, 1)
    metadata = Context.objects.get(pk=plan.context_id).metadata
    assert metadata["undo_forced"] is True
    assert metadata["undo_overwrote"] == [f"testapp_productevent:{later.pgh_id}"]


def test_a_cascade_the_context_caused_is_undone_as_a_whole(logged):
    """Deleting a customer cascaded to its orders: the undo restores the customer, then its orders."""
    customer = Customer.objects.create(email="ada@example.com", name="Ada")
    orders = [Order.objects.create(customer=customer, status=s) for s in ("new", "paid")]
    before = (_state(Customer), _state(Order))
    with _context() as ctx:
        customer.delete()
    assert not Order.objects.exists()
    plan = undo(ctx.id)
    assert (_state(Customer), _state(Order)) == before
    assert {s.model for s in plan.steps} == {"testapp.customer", "testapp.order"}
    assert len(orders) == plan.counts()["restore"] - 1


def test_children_are_deleted_before_their_parents(logged):
    """A context that created a customer and its orders: the undo deletes them all."""
    with _context() as ctx:
        customer = Customer.objects.create(email="ada@example.com", name="Ada")
        Order.objects.create(customer=customer)
    undo(ctx.id)
    assert not Customer.objects.exists() and not Order.objects.exists()


def test_a_logged_table_is_undone_from_the_row_log(logged):
    """Updates, inserts and deletes of a table logged by initlogging are put back."""
    acme = Supplier.objects.create(name="Acme", rating=Decimal("1.500"))
    gone = Supplier.objects.create(name="Gone", rating=2)
    before = _state(Supplier)
    with _context() as ctx:
        Supplier.objects.filter(pk=acme.pk).update(rating=Decimal("4.250"), active=False)
        Supplier.objects.filter(pk=acme.pk).update(rating=Decimal("5.000"))
        gone.delete()
        Supplier.objects.create(name="New")
    plan = undo(ctx.id)
    assert _state(Supplier) == before
    assert sorted(
        RowLog.objects.filter(pgh_context_id=plan.context_id).values_list("pgh_label", flat=True)
    ) == [
        "delete",
        "insert",
        "update",
    ]


def test_undo_accepts_a_context_its_id_or_a_queryset():
    """The target may be a Context, its id (UUID or text) or a queryset of contexts."""
    with _context(batch=1) as first:
        Product.objects.create(name="a", price=1)
    with _context(batch=2):
        Product.objects.create(name="b", price=1)
    assert undo(Context.objects.get(pk=first.id), dry_run=True).counts()["delete"] == 1
    assert undo(str(first.id), dry_run=True).counts()["delete"] == 1
    assert undo(Context.objects.filter(metadata__has_key="batch"), dry_run=True).counts()["delete"] == 2


def test_an_unknown_context_is_a_clear_error():
    """A context id that does not exist, or is not a UUID, is named in the error."""
    with pytest.raises(UndoError, match="No context 00000000-0000-0000-0000-000000000000"):
        undo("00000000-0000-0000-0000-000000000000")
    with pytest.raises(UndoError, match="is not a context id"):
        undo("42")


def test_undo_transaction_undoes_the_changes_of_one_transaction():
    """undo_transaction(xid) puts back what the events of that transaction changed."""
    Product.objects.create(name="lamp", price=10)
    Product.objects.update(price=12)
    xid = ProductEvent.objects.latest("pgh_id").pgh_xid
    # inside the test's one transaction every write has this xid: all of them are undone
    plan = undo_transaction(xid)
    assert not Product.objects.exists()
    assert Context.objects.get(pk=plan.context_id).metadata == {"undo_of_transactions": [xid]}


def test_an_order_tracked_with_before_and_after_events_is_undone(logged):
    """OrderEvent records after_insert, after_update, before_update...: the undo reads the right ones."""
    customer = Customer.objects.create(email="ada@example.com", name="Ada")
    order = Order.objects.create(customer=customer, status="new", note="first")
    with _context() as ctx:
        Order.objects.filter(pk=order.pk).update(status="paid")
        Order.objects.filter(pk=order.pk).update(status="shipped", note="second")
    undo(ctx.id)
    order.refresh_from_db()
    assert (order.status, order.note) == ("new", "first")
    assert OrderEvent.objects.filter(pgh_obj_id=order.pk).exists()


def test_query_count_does_not_grow_with_the_number_of_objects():
    """Set-based: undoing 5 or 200 objects takes the same number of statements."""

    def queries_for(n):
        Product.objects.all().delete()
        Product.objects.bulk_create([Product(name=f"keep{i}", price=1) for i in range(n)])
        with _context() as ctx:
            Product.objects.update(price=2)
            Product.objects.bulk_create([Product(name=f"new{i}", price=1) for i in range(n)])
        with connection.execute_wrapper(counter):
            counter.count = 0
            undo(ctx.id)
        return counter.count

    def counter(execute, sql, params, many, context):
        counter.count += 1
        return execute(sql, params, many, context)

    assert queries_for(5) == queries_for(200)


def test_progress_is_reported_up_to_the_total():
    """progress(done, total, what) is called as the undo goes, ending at done == total."""
    with _context() as ctx:
        Product.objects.create(name="lamp", price=10)
    calls = []
    undo(ctx.id, progress=lambda done, total, what: calls.append((done, total, what)))
    assert [done for done, _, _ in calls] == list(range(1, len(calls) + 1))
    assert calls[-1][0] == calls[-1][1]
    assert "planned testapp.product" in [what for _, _, what in calls]


@pytest.mark.django_db(transaction=True)
def test_a_change_committed_while_the_undo_waits_is_a_conflict_not_overwritten():
    """The undo locks the rows before planning: a writer holding one commits first and shows as a conflict."""
    import threading
    import time

    import psycopg

    lamp = Product.objects.create(name="lamp", price=10, stock=1)
    with _context() as ctx:
        Product.objects.filter(pk=lamp.pk).update(price=99)
    settings = connection.settings_dict
    dsn = {
        "dbname": settings["NAME"],
        "host": settings["HOST"],
        "port": settings["PORT"],
        "user": settings["USER"],
    }
    writer = psycopg.connect(**dsn)
    writer.execute("UPDATE testapp_product SET stock = 5 WHERE id = %s", [lamp.pk])  # holds the row lock
    writer_pid = writer.info.backend_pid
    outcome = {}

    def run():
        try:
            outcome["plan"] = undo(ctx.id)
        except Exception as exc:
            outcome["error"] = exc
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    # A separate autocommit connection watches: pg_stat_activity is read once per transaction.
    with psycopg.connect(**dsn, autocommit=True) as watcher:
        try:
            deadline = time.monotonic() + 10
            while not watcher.execute(
                "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE %s = ANY (pg_blocking_pids(pid)))",
                [writer_pid],
            ).fetchone()[0]:
                assert time.monotonic() < deadline, f"the undo never waited for the row lock: {outcome}"
                time.sleep(0.02)
            writer.commit()
        finally:
            writer.close()
            thread.join(10)
    assert "error" in outcome and outcome["error"].plan.conflicts
    lamp.refresh_from_db()
    assert (lamp.price, lamp.stock) == (99, 5)


def test_a_later_change_to_a_logged_row_is_a_conflict(logged):
    """Row log: a row changed after the context by another one is refused, naming the entry."""
    acme = Supplier.objects.create(name="Acme", rating=1)
    with _context() as ctx:
        Supplier.objects.filter(pk=acme.pk).update(rating=2)
    Supplier.objects.filter(pk=acme.pk).update(active=False)
    later = RowLog.objects.filter(pgh_obj_id=str(acme.pk)).latest("pgh_id")
    with pytest.raises(
        UndoError,
        match=f"testapp.supplier {acme.pk}: changed after it by audit_stream_row_log:{later.pgh_id}",
    ):
        undo(ctx.id)
    undo(ctx.id, force=True)
    acme.refresh_from_db()
    assert (acme.rating, acme.active) == (1, True)


@pytest.mark.django_db(transaction=True)
def test_the_undo_reaches_the_change_feed_under_its_own_context():
    """Folded, the undo's changes are Change rows of the undo's context."""
    from audit_stream.models import Change
    from audit_stream.stream.fold import fold_all

    with _context() as ctx:
        lamp = Product.objects.create(name="lamp", price=10)
    plan = undo(ctx.id)
    fold_all()
    change = Change.objects.get(context_id=plan.context_id)
    assert (change.model, change.object_id, change.label) == (
        "testapp.product",
        str(lamp.pk),
        "before_delete",
    )
