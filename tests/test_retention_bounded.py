"""Retention chooses its rows exactly, ranking only the objects that can lose one.

``keep_last`` ranks the events (and changes) of each object newest first; an
object with no more than ``keep_last`` of them loses none, so only the others
are ranked: what PostgreSQL ranked is read from its own plan. The counts of a
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


def _event_params(keep_last, cutoff=None) -> dict:
    with connection.cursor() as cursor:
        done, floor, _ = retention._checkpoint(cursor, "testapp_productevent")
    return {
        "cutoff": cutoff,
        "keep_last": keep_last,
        "force": False,
        "done": done,
        "floor": floor,
        "above": None,
    }


def test_keep_last_ranks_only_the_events_of_objects_with_more_than_that(history):
    sql = retention._event_candidates(connection, ProductEvent, retention.Policy(None, 10))
    plan = _plan(sql, _event_params(10))
    assert _ranked(plan) == BUSY  # not QUIET + BUSY: the quiet products are never ranked
    assert plan["Actual Rows"] == 1


def test_keep_last_ranks_only_the_changes_of_objects_with_more_than_one(history):
    plan = _plan(retention._CHANGE_CANDIDATES, {"cutoff": None, "keep_last": 10, "above": None})
    assert _ranked(plan) == BUSY


def test_max_age_alone_ranks_nothing(history):
    sql = retention._event_candidates(connection, ProductEvent, retention.Policy(timedelta(days=1), None))
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
