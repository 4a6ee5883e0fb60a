"""The per-object counts retention's ``keep_last`` reads (audit_stream.retention.counts).

A trigger on the change feed counts, per event table and object, its changes
and its folded events; retention subtracts the events it deletes. The counts
only choose which objects are ranked: a count too high costs reading, a count
too low keeps rows; the rows deleted are always ranked from the rows
themselves, so the dry run and the run agree.
"""

from collections import Counter
from datetime import timedelta

import pytest
from django.db import connection

from audit_stream import retention
from audit_stream.models import Change, ObjectCount
from audit_stream.retention import counts
from audit_stream.stream import fold
from tests.testapp.models import Product, ProductEvent

pytestmark = pytest.mark.django_db(transaction=True)

PRODUCTS = "testapp.ProductEvent"
EVENTS = "testapp_productevent"


def _products(updates: list[int]) -> list[Product]:
    """One product per entry, updated that many times after its insert; all folded."""
    made = []
    for n in updates:
        product = Product.objects.create(name=f"p{len(made)}")
        for price in range(1, n + 1):
            Product.objects.filter(pk=product.pk).update(price=price)
        made.append(product)
    fold.fold(EVENTS)
    return made


def _counted(field: str) -> dict[str, int]:
    return dict(ObjectCount.objects.filter(event_table=EVENTS).values_list("object_id", field))


def _events_per_object() -> dict[str, int]:
    return {str(k): n for k, n in Counter(ProductEvent.objects.values_list("pgh_obj_id", flat=True)).items()}


def test_folding_counts_each_objects_changes_and_events():
    """Each change written adds one to its object's changes and folded events."""
    a, b = _products([0, 4])
    assert _counted("changes") == {str(a.pk): 1, str(b.pk): 5}
    assert _counted("events") == {str(a.pk): 1, str(b.pk): 5}


def test_pruning_changes_takes_them_from_the_counts(settings):
    """The trigger subtracts the deleted changes; the counts still match the feed."""
    a, b = _products([2, 6])
    settings.AUDIT_STREAM = {"RETENTION": {"changes": {"keep_last": 2}}}
    assert retention.prune(targets=["changes"]).rows["audit_stream_change"] == 1 + 5
    feed = Counter(Change.objects.filter(event_table=EVENTS).values_list("object_id", flat=True))
    assert _counted("changes") == dict(feed) == {str(a.pk): 2, str(b.pk): 2}


def test_pruning_events_takes_them_from_the_counts(settings):
    """Each batch subtracts the events it deleted from their objects' counts, in its own transaction."""
    _products([1, 7, 0])
    settings.AUDIT_STREAM = {"RETENTION": {PRODUCTS: {"keep_last": 3}}}
    assert retention.prune(targets=[PRODUCTS], batch_size=2).rows[EVENTS] == 5
    assert _counted("events") == _events_per_object()


def test_a_prune_by_age_alone_does_not_subtract_and_a_later_keep_last_stays_exact(settings):
    """By age alone no count is read, so none is subtracted (too high, never too low): a keep_last run
    afterwards ranks those objects for nothing, and deletes exactly what its policy says."""
    _, product = _products([1, 3])
    counted = _counted("events")
    by_age = retention.Policy(max_age=timedelta(microseconds=1))  # every folded event
    report = retention.prune(targets=[PRODUCTS], overrides=by_age)
    assert report.rows[EVENTS] == 2 + 4
    assert _counted("events") == counted
    for price in (10, 11, 12):
        Product.objects.filter(pk=product.pk).update(price=price)
    fold.fold(EVENTS)
    keep_two = retention.Policy(keep_last=2)
    assert retention.prune(targets=[PRODUCTS], overrides=keep_two, dry_run=True).rows[EVENTS] == 1
    assert retention.prune(targets=[PRODUCTS], overrides=keep_two).rows[EVENTS] == 1
    assert ProductEvent.objects.filter(pgh_obj_id=product.pk).count() == 2


def test_a_second_dry_run_after_a_prune_finds_nothing_to_rank(settings):
    """Once pruned, no object has more than keep_last counted: the next run ranks nothing."""
    _products([9, 9])
    settings.AUDIT_STREAM = {"RETENTION": {PRODUCTS: {"keep_last": 3}, "changes": {"keep_last": 3}}}
    retention.prune(targets=[PRODUCTS, "changes"])
    assert not ObjectCount.objects.filter(event_table=EVENTS, events__gt=3).exists()
    assert not ObjectCount.objects.filter(event_table=EVENTS, changes__gt=3).exists()


def test_counts_too_high_cost_reading_never_a_kept_row(settings):
    """Objects counted with more than they have are ranked, and lose exactly what the policy says."""
    _products([0, 2, 5])
    ObjectCount.objects.update(events=100, changes=100)
    settings.AUDIT_STREAM = {"RETENTION": {PRODUCTS: {"keep_last": 2}, "changes": {"keep_last": 2}}}
    expected = {EVENTS: 1 + 4, "audit_stream_change": 1 + 4}
    dry = retention.prune(targets=[PRODUCTS, "changes"], dry_run=True).rows
    assert {table: dry[table] for table in expected} == expected
    done = retention.prune(targets=[PRODUCTS, "changes"]).rows
    assert {table: done[table] for table in expected} == expected


def test_counts_are_what_choose_the_objects_ranked(settings):
    """An object counted with too few rows is not ranked, by the dry run and the run alike (it keeps more)."""
    _, crowded = _products([0, 5])
    ObjectCount.objects.filter(object_id=str(crowded.pk)).update(events=1, changes=1)
    settings.AUDIT_STREAM = {"RETENTION": {PRODUCTS: {"keep_last": 2}, "changes": {"keep_last": 2}}}
    assert retention.prune(targets=[PRODUCTS, "changes"], dry_run=True).total == 0
    assert retention.prune(targets=[PRODUCTS, "changes"]).total == 0
    assert ProductEvent.objects.filter(pgh_obj_id=crowded.pk).count() == 6


def test_an_object_with_unfolded_events_is_ranked_with_them(settings):
    """Unfolded events are not counted yet, but count in the ranking: the oldest folded one goes."""
    (product,) = _products([2])  # 3 folded events: not more than keep_last 3
    Product.objects.filter(pk=product.pk).update(price=9)  # a 4th, newest, not folded
    settings.AUDIT_STREAM = {"RETENTION": {PRODUCTS: {"keep_last": 3}}}
    oldest = ProductEvent.objects.filter(pgh_obj_id=product.pk).order_by("pgh_id").first().pgh_id
    assert retention.prune(targets=[PRODUCTS], dry_run=True).rows[EVENTS] == 1
    assert retention.prune(targets=[PRODUCTS]).rows[EVENTS] == 1
    assert not ProductEvent.objects.filter(pgh_id=oldest).exists()


def test_erasure_leaves_no_count_of_the_object():
    """Erasing an object removes its counts with its history."""
    a, b = _products([1, 1])
    retention.erase("testapp.Product", str(a.pk))
    assert set(_counted("events")) == {str(b.pk)}


def test_the_counts_of_existing_history_are_rebuilt_by_the_backfill():
    """The migration counts the history already there: every change, and every event of each table."""
    _products([0, 3])
    Product.objects.create(name="not folded")
    ObjectCount.objects.all().delete()
    counts.backfill(connection)
    assert _counted("events") == _events_per_object()
    feed = Counter(Change.objects.filter(event_table=EVENTS).values_list("object_id", flat=True))
    assert {obj: n for obj, n in _counted("changes").items() if n} == dict(feed)
