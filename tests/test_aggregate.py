"""AggregateEvent: one object's history across event tables, with diffs, as a QuerySet."""

import re
from decimal import Decimal

import pytest
from django.contrib.auth.models import User

import audit_stream
from audit_stream import partitions
from audit_stream.models import AggregateEvent, Change
from audit_stream.stream import fold
from tests.testapp.models import (
    Customer,
    Label,
    OrderEvent,
    PriceChange,
    Product,
    ProductEvent,
    Review,
    Supplier,
    UserAggregateEvent,
    UserEvent,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def product():
    with audit_stream.context(user=7):
        product = Product.objects.create(name="lamp", price=1)
    Product.objects.filter(pk=product.pk).update(price=2)
    Product.objects.filter(pk=product.pk).update(name="lamp 2")
    Product.objects.create(name="other")
    return product


@pytest.mark.django_db(transaction=True)
def test_target_returns_the_objects_events_across_tables_in_order(product):
    """In time order (each write of the fixture is its own transaction here; one transaction's events
    share its time and are ordered by table, then pgh_id)."""
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
    assert diffs[1] == {"price": [1, 2]} or diffs[1] == {"price": [Decimal(1), Decimal(2)]}
    assert diffs[2] == {"name": ["lamp", "lamp 2"]}


def test_the_first_event_of_an_object_in_a_table_has_no_diff(product):
    """As in django-pghistory: pgh_diff is None when there is no previous event to compare with."""
    rows = list(AggregateEvent.objects.target(product))
    first_per_table = {}
    for row in rows:
        first_per_table.setdefault(row.pgh_table, row)
    assert {table: row.pgh_diff for table, row in first_per_table.items()} == {
        "testapp_productevent": None,
        "testapp_pricechange": None,
    }
    assert all(row.pgh_diff is not None for row in rows if row not in first_per_table.values())


@pytest.mark.django_db(transaction=True)
def test_diffs_match_the_change_feed_which_lists_every_column_of_the_first_event(product):
    fold.fold_all()
    aggregate = {r.pgh_id: r.pgh_diff for r in AggregateEvent.objects.target(product).across(ProductEvent)}
    changes = {
        c.event_id: c.diff
        for c in Change.objects.for_object(product).filter(event_table="testapp_productevent")
    }
    first = min(changes)
    assert aggregate.pop(first) is None
    assert changes.pop(first)["name"] == [None, "lamp"]
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


def test_a_query_without_target_raises_naming_the_fix(product):
    """Not every event of every table: a query must say what it aggregates."""
    with pytest.raises(
        ValueError, match=r"AggregateEvent needs a target: use AggregateEvent\.objects\.target"
    ):
        list(AggregateEvent.objects.all())
    with pytest.raises(ValueError, match="needs a target"):
        AggregateEvent.objects.filter(pgh_label="snapshot").count()


@pytest.fixture
def ada():
    return User.objects.create_user("ada")


@pytest.fixture
def review(product, ada):
    return Review.objects.create(product=product, author=ada, stars=4)


def test_target_follows_copied_foreign_keys_into_event_models_without_pgh_obj(product, ada, review):
    """target(user) returns the user's own events and those of every row that points to the user."""
    Review.objects.filter(pk=review.pk).update(stars=5)
    rows = list(AggregateEvent.objects.target(ada))
    assert sorted({r.pgh_table for r in rows}) == ["testapp_reviewevent", "testapp_userevent"]
    reviews = [r for r in rows if r.pgh_table == "testapp_reviewevent"]
    assert [r.pgh_data["stars"] for r in reviews] == [4, 5]
    assert {r.pgh_obj_id for r in reviews} == {None}
    assert {r.pgh_diff for r in reviews} == {None}  # no pgh_obj: no previous event to compare with


def test_target_of_a_product_includes_the_events_of_rows_pointing_to_it(product, review):
    tables = [r.pgh_table for r in AggregateEvent.objects.target(product)]
    assert tables.count("testapp_reviewevent") == 1
    assert tables.count("testapp_productevent") == 3


def test_target_takes_a_list_of_objects(product):
    other = Product.objects.get(name="other")
    rows = AggregateEvent.objects.target([product, other]).across(ProductEvent)
    assert sorted({r.pgh_obj_id for r in rows}) == sorted({str(product.pk), str(other.pk)})
    assert rows.count() == 4


def test_target_takes_a_queryset(product):
    rows = AggregateEvent.objects.target(Product.objects.filter(name__startswith="lamp")).across(ProductEvent)
    assert {r.pgh_obj_id for r in rows} == {str(product.pk)}
    assert rows.count() == 3


def test_target_refuses_objects_of_several_models(product):
    customer = Customer.objects.create(email="c@example.com", name="C")
    with pytest.raises(ValueError, match="objects of one model"):
        AggregateEvent.objects.target([product, customer])


@pytest.mark.parametrize(
    ("target", "event_model"),
    [
        ("customer", ProductEvent),  # integer keys on both sides: must not return products' events
        ("label", ProductEvent),  # a slug against integers
        ("customer", UserEvent),
    ],
)
def test_across_an_event_model_that_cannot_reference_the_target_raises(product, target, event_model):
    obj = {
        "customer": lambda: Customer.objects.create(pk=product.pk, email="c@example.com", name="C"),
        "label": lambda: Label.objects.create(code="red", text="Red"),
    }[target]()
    with pytest.raises(ValueError, match=rf"{event_model._meta.label} cannot reference"):
        list(AggregateEvent.objects.target(obj).across(event_model))
    with pytest.raises(ValueError, match="cannot reference"):
        AggregateEvent.objects.across(event_model).target(obj)


def test_across_an_event_model_that_references_through_a_copied_key(product):
    customer = Customer.objects.create(email="c@example.com", name="C")
    order = customer.orders.create()
    rows = AggregateEvent.objects.target(customer).across(OrderEvent)
    assert {r.pgh_obj_id for r in rows} == {str(order.pk)}
    assert rows.count() == OrderEvent.objects.filter(customer=customer).count() > 0


def test_a_projects_own_aggregate_event_reads_extra_fields_from_the_context(product, ada):
    """BaseAggregateEvent subclasses: fields not starting with pgh_ come from the context metadata."""
    with audit_stream.context(user=ada.pk):
        Product.objects.filter(pk=product.pk).update(price=3)
    rows = list(UserAggregateEvent.objects.target(product).across(ProductEvent).select_related("user"))
    assert [(r.user_id, r.who()) for r in rows] == [
        (7, "nobody"),
        (None, "nobody"),
        (None, "nobody"),
        (ada.pk, "ada"),
    ]
    by_ada = UserAggregateEvent.objects.target(product).filter(user=ada)
    assert sorted(r.pgh_label for r in by_ada) == ["price_changed", "snapshot"]


def test_one_objects_history_is_an_index_scan_per_table(product):
    from django.db import connection

    Product.objects.bulk_create([Product(name=f"p{i}") for i in range(3000)])
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE testapp_productevent")
        cursor.execute("ANALYZE testapp_pricechange")
        sql, params = AggregateEvent.objects.target(product).query.sql_with_params()
        cursor.execute("EXPLAIN " + sql, params)
        plan = "\n".join(row[0] for row in cursor.fetchall())
        # On the partitioned layout (AUDIT_STREAM_TEST_PARTITIONED=1) the planner may scan an empty
        # partition (the default one, those created ahead): no partition holding events is scanned.
        holding = [
            part.name
            for part in partitions.partitions(cursor, "testapp_productevent")
            if _has_rows(cursor, part.name)
        ] or ["testapp_productevent"]
    scanned = re.findall(r"Seq Scan on (\w+)", plan)
    assert not set(scanned) & set(holding), plan
    assert "productevent_" in plan and "_obj" in plan, plan


def _has_rows(cursor, table: str) -> bool:
    cursor.execute(f'SELECT EXISTS (SELECT 1 FROM "{table}")')
    return cursor.fetchone()[0]


@pytest.mark.parametrize("aggregate", [AggregateEvent, UserAggregateEvent])
def test_a_target_no_event_model_references_has_no_events(aggregate):
    supplier = Supplier.objects.create(name="acme")
    assert list(aggregate.objects.target(supplier)) == []
    assert aggregate.objects.target(supplier).count() == 0
