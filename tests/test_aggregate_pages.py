"""AggregateEvent pages: a slice costs its rows, and reads exactly what the whole list holds at its place.

A sliced QuerySet finds its page on the events' plain columns, then computes
``pgh_data`` and ``pgh_diff`` for the page's rows only (each against its one
previous event). These tests compare every page with the same rows of the
unsliced list (which computes every row), and read PostgreSQL's own plan to
count the rows whose data was built.
"""

import json

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

import audit_stream
from audit_stream.models import AggregateEvent
from tests.testapp.models import (
    Customer,
    Order,
    OrderEvent,
    PriceChange,
    Product,
    ProductEvent,
    UserAggregateEvent,
)

pytestmark = pytest.mark.django_db

HISTORY = 60
PAGE = 7


def _rows(queryset) -> list[tuple]:
    return [(r.pgh_key, r.pgh_label, r.pgh_obj_id, r.pgh_data, r.pgh_diff) for r in queryset]


@pytest.fixture
def product():
    """A product with HISTORY events in two tables, interleaved with another product's."""
    product = Product.objects.create(name="lamp", price=1)
    other = Product.objects.create(name="other", price=1)
    for i in range(HISTORY // 2):
        with audit_stream.context(user=i % 3):
            Product.objects.filter(pk=product.pk).update(price=2 + i, stock=i % 4)
        Product.objects.filter(pk=other.pk).update(price=2 + i)
    return product


@pytest.mark.parametrize(
    "order_by",
    [
        (),  # the model's ordering: pgh_created_at, pgh_table, pgh_id
        ("-pgh_created_at", "-pgh_table", "-pgh_id"),  # the admin's History page
        ("pgh_label", "-pgh_id"),
    ],
)
def test_every_page_holds_the_rows_of_the_whole_list_at_its_place(product, order_by):
    everything = AggregateEvent.objects.target(product)
    if order_by:
        everything = everything.order_by(*order_by)
    whole = _rows(everything)
    assert len(whole) > HISTORY
    for start in range(0, len(whole) + PAGE, PAGE):
        assert _rows(everything[start : start + PAGE]) == whole[start : start + PAGE], start
    assert _rows(everything[len(whole) - PAGE :]) == whole[-PAGE:]


def test_a_filtered_page_diffs_against_the_previous_event_of_the_target_not_of_the_filter(product):
    """Filters choose the rows; each row's diff is still against its previous event of the object."""
    everything = AggregateEvent.objects.target(product).filter(pgh_context__metadata__user=1)
    whole = _rows(everything)
    assert 0 < len(whole) < HISTORY
    assert _rows(everything[2 : 2 + PAGE]) == whole[2 : 2 + PAGE]
    assert all(row[4] is not None for row in whole)  # never the first event: each has its previous


def test_a_page_filtered_by_its_diff_or_data_reads_what_the_whole_list_holds(product):
    """A filter or an ordering on pgh_diff or pgh_data needs them for every event: still exact."""
    by_diff = AggregateEvent.objects.target(product).filter(pgh_diff__has_key="stock")
    assert _rows(by_diff[1:4]) == _rows(by_diff)[1:4]
    by_data = (
        AggregateEvent.objects.target(product).across(ProductEvent).order_by("pgh_data__stock", "pgh_id")
    )
    assert _rows(by_data[3:9]) == _rows(by_data)[3:9]


def test_a_page_through_a_copied_foreign_key_diffs_among_the_targets_events():
    """target(customer): an order moved to the customer diffs against its last event of the customer's."""
    ada, bob = (Customer.objects.create(email=f"{n}@example.com", name=n) for n in ("ada", "bob"))
    order = Order.objects.create(customer=bob)
    Order.objects.filter(pk=order.pk).update(status="paid")
    Order.objects.filter(pk=order.pk).update(customer=ada)
    Order.objects.filter(pk=order.pk).update(status="shipped")
    everything = AggregateEvent.objects.target(Customer.objects.filter(name="ada")).across(OrderEvent)
    whole = _rows(everything)
    assert {row[2] for row in whole} == {str(order.pk)}
    for start in range(len(whole)):
        assert _rows(everything[start : start + 2]) == whole[start : start + 2]


def test_first_last_exists_and_counts_of_pages(product):
    everything = AggregateEvent.objects.target(product).across(ProductEvent)
    whole = _rows(everything.all())
    assert _rows([everything.first()]) == whole[:1]
    assert _rows([everything.last()]) == whole[-1:]
    assert everything[5:].count() == len(whole) - 5
    assert everything.filter(pgh_label="snapshot")[:1].exists()
    assert AggregateEvent.objects.target(product).across(PriceChange)[:3].count() == 3


def _plan_nodes(plan: dict):
    yield plan
    for child in plan.get("Plans", []):
        yield from _plan_nodes(child)


def _rows_built(run) -> int:
    """Rows whose JSONB was built (``to_jsonb``) by the query ``run()`` sends, from PostgreSQL's plan."""
    with CaptureQueriesContext(connection) as sent:
        run()
    assert len(sent) == 1, sent
    # In a test's transaction, a context exited earlier is reset in front of the statement.
    sql = (
        sent[0]["sql"].split("; ", 1)[-1]
        if sent[0]["sql"].startswith("SELECT set_config")
        else sent[0]["sql"]
    )
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN (ANALYZE, VERBOSE, FORMAT JSON) " + sql)
        plan = cursor.fetchone()[0]
    plan = json.loads(plan) if isinstance(plan, str) else plan

    def builds(node: dict) -> bool:
        return any("to_jsonb(" in output for output in node.get("Output", []))

    # A node builds what it outputs and none of its children did (the others pass it on).
    return sum(
        node["Actual Rows"] * node["Actual Loops"]
        for node in _plan_nodes(plan[0]["Plan"])
        if builds(node) and not any(builds(child) for child in node.get("Plans", []))
    )


@pytest.mark.parametrize("where", ["first", "last"])
def test_a_page_builds_the_data_of_its_rows_and_their_previous_events_only(product, where):
    """O(page): pgh_data for the page's rows and one previous event each, whatever the history's length."""
    everything = AggregateEvent.objects.target(product).across(ProductEvent)
    count = everything.count()
    page = everything[:PAGE] if where == "first" else everything[count - PAGE :]
    assert _rows_built(lambda: list(page)) <= 2 * PAGE
    assert _rows_built(lambda: list(everything)) >= count  # the unsliced list builds every row


def test_a_count_builds_no_data(product):
    assert _rows_built(lambda: AggregateEvent.objects.target(product).count()) == 0


def test_an_aggregate_subclass_reads_and_pages_in_time_order(product):
    """A subclass of BaseAggregateEvent with a Meta of its own reads and pages in time order."""
    everything = UserAggregateEvent.objects.target(product).across(ProductEvent)
    keys = [(r.pgh_created_at, r.pgh_table, r.pgh_id) for r in everything]
    assert keys == sorted(keys)
    assert [r.pgh_key for r in everything[10:15]] == [r.pgh_key for r in everything.all()][10:15]
