"""The fold, called in-process: diffs, order, exactly once, and the checkpoint."""

from decimal import Decimal

import pytest
from django.db import connection

import audit_stream
from audit_stream.models import Change, Checkpoint
from audit_stream.stream import fold, wakeup
from tests.testapp.models import Customer, Order, Product

pytestmark = pytest.mark.django_db(transaction=True)

PRODUCTS = "testapp_productevent"


def _diffs(obj):
    return [(c.label, c.diff) for c in Change.objects.for_object(obj).filter(event_table=PRODUCTS)]


def test_first_event_diff_has_every_field():
    product = Product.objects.create(name="lamp", price=10)
    fold.fold(PRODUCTS)
    (change,) = Change.objects.filter(event_table=PRODUCTS)
    assert change.diff["name"] == [None, "lamp"]
    assert change.diff["price"] == [None, 10]
    assert change.snapshot["name"] == "lamp"
    assert (change.model, change.object_id, change.label) == ("testapp.product", str(product.pk), "snapshot")


def test_update_diff_has_only_the_changed_fields():
    product = Product.objects.create(name="lamp", price=10, stock=1)
    Product.objects.filter(pk=product.pk).update(price=12)
    fold.fold(PRODUCTS)
    assert _diffs(product)[1] == ("snapshot", {"price": [10, 12]})


def test_delete_diff_carries_the_old_values():
    product = Product.objects.create(name="lamp", price=10)
    pk = product.pk
    product.delete()
    fold.fold(PRODUCTS)
    change = Change.objects.get(event_table=PRODUCTS, object_id=str(pk), label="before_delete")
    assert change.diff["name"] == ["lamp", None]


def test_numeric_values_are_exact():
    product = Product.objects.create(name="lamp", price=Decimal("0.10"))
    Product.objects.filter(pk=product.pk).update(price=Decimal("0.30"))
    fold.fold(PRODUCTS)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT diff::text FROM audit_stream_change"
            " WHERE label = 'snapshot' ORDER BY event_id DESC LIMIT 1"
        )
        assert cursor.fetchone()[0] == '{"price": [0.10, 0.30]}'


def test_diffs_chain_across_folds_and_batches():
    product = Product.objects.create(name="lamp", price=1)
    for price in range(2, 12):
        Product.objects.filter(pk=product.pk).update(price=price)
        if price == 5:
            fold.fold(PRODUCTS)
    fold.fold(PRODUCTS, batch_size=3)
    assert [d["price"] for _, d in _diffs(product)] == [[None, 1]] + [[p - 1, p] for p in range(2, 12)]


def test_each_event_is_folded_once():
    Product.objects.bulk_create([Product(name=f"p{i}") for i in range(250)])
    first = fold.fold(PRODUCTS, batch_size=100)
    second = fold.fold(PRODUCTS)
    assert (first.folded, second.folded) == (250, 0)
    assert Change.objects.filter(event_table=PRODUCTS).count() == 250
    assert Checkpoint.objects.get(event_table=PRODUCTS).folded == 250


def test_context_is_carried_to_the_change():
    with audit_stream.context(user="ada") as ctx:
        product = Product.objects.create(name="lamp")
    fold.fold(PRODUCTS)
    assert Change.objects.for_object(product).get().context_id == ctx.id
    assert list(Change.objects.by_user("ada")) == list(Change.objects.filter(event_table=PRODUCTS))


def test_query_api_filters():
    customer = Customer.objects.create(email="a@example.com", name="A")
    Order.objects.create(customer=customer)
    Product.objects.create(name="lamp")
    fold.fold_all()
    assert set(Change.objects.for_model(Order).values_list("model", flat=True)) == {"testapp.order"}
    assert set(Change.objects.for_model("testapp.Product").values_list("label", flat=True)) == {"snapshot"}


def test_caught_up_fold_arms_the_wakeup_and_reports_no_work():
    Product.objects.create(name="lamp")
    assert wakeup.has_work(PRODUCTS)
    fold.fold(PRODUCTS)
    assert not wakeup.has_work(PRODUCTS)
    assert wakeup.is_armed()


def test_only_the_first_writer_after_arming_draws_the_wakeup():
    wakeup.arm()
    Product.objects.create(name="first")
    assert not wakeup.is_armed()
    with connection.cursor() as cursor:
        cursor.execute("SELECT last_value FROM audit_stream_wakeup")
        assert cursor.fetchone()[0] == 1
        Product.objects.create(name="second")
        cursor.execute("SELECT last_value FROM audit_stream_wakeup")
        assert cursor.fetchone()[0] == 2


def test_an_unknown_table_is_refused():
    with pytest.raises(ValueError, match="'nope' is not an event table"):
        fold.fold("nope")


@pytest.mark.django_db
def test_folding_inside_a_transaction_that_wrote_is_refused():
    """Its own uncommitted events would be folded or skipped depending on other sessions' timing."""
    Product.objects.create(name="uncommitted")  # the test's own, open transaction
    with pytest.raises(RuntimeError, match=r"outside transaction\.atomic"):
        fold.fold(PRODUCTS)
