"""Retention chooses its rows exactly, ranking only the objects that can lose one.

``keep_last`` ranks the events (and changes) of each object newest first; an
object with no more than ``keep_last`` of them loses none, so only the others
are ranked (found in the per-object counts, audit_stream.retention.counts):
what PostgreSQL ranked, and read, is taken from its own plan. The counts of a
dry run are compared with a count made in Python from the rows themselves, and
with what the real run deletes.
"""

import json
from collections import Counter
from datetime import timedelta

import pytest
from django.db import connection

from audit_stream import retention
from audit_stream.models import Change
from audit_stream.retention import changes, events
from audit_stream.stream import fold
from tests.testapp.models import Product, ProductEvent

pytestmark = pytest.mark.django_db(transaction=True)

PRODUCTS = "testapp.ProductEvent"
QUIET = 40  # products written once
BUSY = 15  # events of the one busy product


@pytest.fixture
def history():
    """QUIET products with one event, one product with BUSY events, all folded."""
    Product.objects.bulk_create([Product(name=f"quiet {i}") for i in range(QUIET)])
    busy = Product.objects.create(name="busy", price=0)
    for price in range(1, BUSY):
        Product.objects.filter(pk=busy.pk).update(price=price)
    fold.fold("testapp_productevent")
    return busy


def _plan(sql: str, params: dict) -> dict:
    """PostgreSQL's executed plan of counting the candidates of ``sql`` (an INSERT ... SELECT)."""
    select = sql.strip().split("\n", 1)[1]
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN (ANALYZE, FORMAT JSON) SELECT count(*) FROM (" + select + ") AS c", params)
        plan = cursor.fetchone()[0]
    return (json.loads(plan) if isinstance(plan, str) else plan)[0]["Plan"]


def _nodes(plan: dict):
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


def _ranked(plan: dict) -> int:
    """Rows that went through a ranking (a WindowAgg), in total."""
    return sum(n["Actual Rows"] * n["Actual Loops"] for n in _nodes(plan) if n["Node Type"] == "WindowAgg")


def _read(plan: dict, relation: str) -> int:
    """Rows the plan read from ``relation`` (or its partitions): returned and filtered out, every loop."""
    return sum(
        (n["Actual Rows"] + n.get("Rows Removed by Filter", 0) + n.get("Rows Removed by Index Recheck", 0))
        * n["Actual Loops"]
        for n in _nodes(plan)
        if n.get("Relation Name", "").startswith(relation)
    )


@pytest.fixture
def crowd(history):
    """Many more quiet products (one event and one change each), folded, the tables analysed."""
    Product.objects.bulk_create([Product(name=f"crowd {i}") for i in range(2000)])
    fold.fold("testapp_productevent")
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE testapp_productevent, audit_stream_change, audit_stream_object_count")
    return history


def test_keep_last_reads_the_rows_of_the_objects_it_ranks_not_the_table(crowd):
    """The objects with more than keep_last rows come from the per-object counts: neither the event table
    nor the change feed is read beyond the busy product's rows (no pass grouping every object)."""
    sql = events.candidates(connection, ProductEvent, retention.Policy(None, 10))
    assert _read(_plan(sql, _event_params(10)), "testapp_productevent") == BUSY
    plan = _plan(changes.CHANGE_CANDIDATES, {"cutoff": None, "keep_last": 10, "above": None})
    assert _read(plan, "audit_stream_change") == BUSY


def _event_params(keep_last, cutoff=None) -> dict:
    with connection.cursor() as cursor:
        done, floor, _ = events.checkpoint(cursor, "testapp_productevent")
    return {
        "cutoff": cutoff,
        "keep_last": keep_last,
        "force": False,
        "done": done,
        "floor": floor,
        "above": None,
        "count_table": "testapp_productevent",
        "former_tables": [],
    }


def test_keep_last_ranks_only_the_events_of_objects_with_more_than_that(history):
    sql = events.candidates(connection, ProductEvent, retention.Policy(None, 10))
    plan = _plan(sql, _event_params(10))
    assert _ranked(plan) == BUSY  # not QUIET + BUSY: the quiet products are never ranked
    assert plan["Actual Rows"] == 1


def test_keep_last_ranks_only_the_changes_of_objects_with_more_than_one(history):
    plan = _plan(changes.CHANGE_CANDIDATES, {"cutoff": None, "keep_last": 10, "above": None})
    assert _ranked(plan) == BUSY


def test_max_age_alone_ranks_nothing(history):
    sql = events.candidates(connection, ProductEvent, retention.Policy(timedelta(days=1), None))
    assert _ranked(_plan(sql, _event_params(None, cutoff="2000-01-01"))) == 0


@pytest.mark.parametrize("keep_last", [1, 3, BUSY - 1, BUSY, 100])
def test_the_dry_run_counts_exactly_what_the_prune_deletes(settings, history, keep_last):
    unfolded = Product.objects.create(name="written after the fold")
    Product.objects.filter(pk=unfolded.pk).update(price=9)  # two unfolded events: never candidates
    events, changes = Counter(), Counter()
    for obj in ProductEvent.objects.exclude(pgh_obj_id=unfolded.pk).values_list("pgh_obj_id", flat=True):
        events[obj] += 1
    for key in Change.objects.values_list("event_table", "model", "object_id"):
        changes[key] += 1
    expected = sum(max(0, n - keep_last) for n in events.values())
    expected_changes = sum(max(0, n - keep_last) for n in changes.values())  # keep_last >= 1 keeps the latest
    policy = {"keep_last": keep_last}
    settings.AUDIT_STREAM = {"RETENTION": {PRODUCTS: policy, "changes": policy}}

    counted = retention.prune(targets=[PRODUCTS, "changes"], dry_run=True).rows
    assert (counted["testapp_productevent"], counted["audit_stream_change"]) == (expected, expected_changes)
    assert expected > 0 or keep_last >= BUSY
    deleted = retention.prune(targets=[PRODUCTS, "changes"]).rows
    assert (deleted["testapp_productevent"], deleted["audit_stream_change"]) == (expected, expected_changes)
    assert ProductEvent.objects.filter(pgh_obj_id=unfolded.pk).count() == 2
