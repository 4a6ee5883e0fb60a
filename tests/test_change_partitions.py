"""The change feed partitioned by its id: conversion, the fold on it, retention by dropping partitions.

These tests partition ``audit_stream_change`` of the second test database
("other", 10 ids per partition) and leave it so for the session: no other test
folds there. The whole suite runs on a partitioned change feed with
AUDIT_STREAM_TEST_PARTITIONED=1 (README, "Partitioned history").
"""

from datetime import timedelta

import pytest
from django.db import IntegrityError, connections, transaction

import audit_stream
from audit_stream import partitions, retention
from audit_stream.dashboard import queries
from audit_stream.models import Change, Context, ContextCount
from audit_stream.stream import fold
from tests.testapp.models import Note, Ticket

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "other"])

DB = "other"
CHANGES = "audit_stream_change"
TICKETS = "testapp_ticketevent"
LAYOUT = partitions.Layout(
    CHANGES, size=10, ahead=2, column="id", local_unique=(("event_table", "event_id"),)
)


def _sql(statement: str, params=None):
    with connections[DB].cursor() as cursor:
        cursor.execute(statement, params)
        return cursor.fetchall() if cursor.description else None


def _parts() -> list[partitions.Partition]:
    with connections[DB].cursor() as cursor:
        return partitions.partitions(cursor, CHANGES)


@pytest.fixture
def partitioned(settings):
    """The change feed of "other" in partitions of 10 ids, from the next id on."""
    settings.AUDIT_STREAM = {**getattr(settings, "AUDIT_STREAM", {}), "FOLD_LINGER": 0}
    partitions.convert(LAYOUT, using=DB)  # False when an earlier test (or the layout) did
    ranged = [p.upper for p in _parts() if not p.default and p.upper is not None]
    _sql(f"ALTER TABLE {CHANGES} ALTER id RESTART WITH %s", [max(ranged)])  # past ranges of another size
    partitions.ensure(LAYOUT, using=DB)
    return LAYOUT


def _write(count: int, state: str = "open") -> list[Ticket]:
    return [Ticket.objects.using(DB).create(title=f"t{i}", state=state) for i in range(count)]


def _fold() -> int:
    return fold.fold(TICKETS, using=DB).folded


def _age_changes(days: int = 100) -> None:
    """Every change ``days`` older (set-up only), with the time bounds of its partitions."""
    partitions.ensure(LAYOUT, using=DB)
    _sql(f"UPDATE {CHANGES} SET created_at = created_at - %s", [timedelta(days=days)])
    for part in _parts():
        if part.full_before is not None:
            bound = (part.full_before - timedelta(days=days)).isoformat()
            _sql(f'COMMENT ON TABLE "{part.name}" IS %s', [f"audit_stream: full before {bound}"])


def _prune(**kwargs) -> retention.PruneReport:
    return retention.prune(
        using=DB, targets=["changes"], overrides=retention.Policy(max_age=timedelta(days=90)), **kwargs
    )


def test_converting_the_change_feed_keeps_every_change_and_its_id(settings):
    """Changes folded before the conversion keep their ids; later ones continue the sequence."""
    settings.AUDIT_STREAM = {**getattr(settings, "AUDIT_STREAM", {}), "FOLD_LINGER": 0}
    _write(3)
    _fold()
    before = list(Change.objects.using(DB).order_by("id").values_list("id", "event_id"))
    partitions.convert(LAYOUT, using=DB)
    with connections[DB].cursor() as cursor:
        assert partitions.is_partitioned(cursor, CHANGES)
    assert list(Change.objects.using(DB).order_by("id").values_list("id", "event_id")) == before
    _write(1)
    assert _fold() == 1
    assert Change.objects.using(DB).order_by("id").last().id > before[-1][0]


def test_the_fold_diffs_against_a_change_in_an_earlier_partition(partitioned):
    """An object's previous state is found in whichever partition holds its last change."""
    ticket = _write(1)[0]
    _write(25)  # the feed moves on by more than two partitions
    _fold()
    Ticket.objects.using(DB).filter(pk=ticket.pk).update(state="closed")
    assert _fold() == 1
    last = Change.objects.using(DB).filter(object_id=str(ticket.pk)).order_by("id").last()
    assert last.diff == {"state": ["open", "closed"]}
    assert len([p for p in _parts() if not p.default]) >= 3


def test_a_second_change_for_one_event_is_refused_within_a_partition(partitioned):
    """The (event_table, event_id) key holds in each partition: the same event folded twice fails."""
    _write(1)
    _fold()
    change = Change.objects.using(DB).get()
    with pytest.raises(IntegrityError), transaction.atomic(using=DB):
        _sql(
            f"INSERT INTO {CHANGES} (event_table, event_id, model, label, created_at, diff, snapshot)"
            " SELECT event_table, event_id, model, label, created_at, diff, snapshot FROM"
            f" {CHANGES} WHERE id = %s",
            [change.id],
        )


def test_retention_drops_aged_partitions_and_keeps_each_objects_latest_change(partitioned):
    """Aged partitions go whole but for the changes still the latest of their object, whose ids stay."""
    tickets = _write(12)
    _fold()
    for ticket in tickets[:6]:
        ticket.state = "closed"
        ticket.save(using=DB)
    _write(15)  # the updates' changes end up in partitions full before the cutoff, too
    _fold()
    latest = {
        object_id: change_id
        for object_id, change_id in Change.objects.using(DB)
        .order_by("object_id", "-id")
        .distinct("object_id")
        .values_list("object_id", "id")
    }
    _age_changes()
    aged = [p.name for p in _parts() if p.full_before is not None]
    report = _prune()
    assert report.rows[CHANGES] == 6  # the first change of each updated ticket
    kept = dict(Change.objects.using(DB).values_list("object_id", "id"))
    assert kept == latest
    remaining = {p.name for p in _parts()}
    assert not remaining & set(aged)  # replaced by one partition holding the kept changes
    assert _sql("SELECT count(*) FROM pg_class WHERE relname = ANY(%s)", [aged]) == [(0,)]  # dropped too
    with connections[DB].cursor() as cursor:
        assert not partitions.default_rows(cursor, CHANGES)


def test_a_partition_an_interrupted_prune_detached_is_dropped_by_the_next(partitioned):
    """A change partition detached and marked by a prune that died before its drop goes at the next prune."""
    _write(25)
    _fold()
    _age_changes()
    lowest = next(p for p in _parts() if p.full_before is not None).name
    with transaction.atomic(using=DB), connections[DB].cursor() as cursor:
        cursor.execute(f'ALTER TABLE {CHANGES} DETACH PARTITION "{lowest}"')
        partitions.mark_detached(cursor, CHANGES, lowest)
    _prune()
    assert _sql("SELECT count(*) FROM pg_class WHERE relname = %s", [lowest]) == [(0,)]


def test_after_a_partition_drop_the_next_diff_holds_only_what_changed(partitioned):
    """The fold diffs an object's next event against its kept change, in the partition that replaced."""
    ticket = _write(1)[0]
    Ticket.objects.using(DB).filter(pk=ticket.pk).update(title="renamed")
    _write(25)
    _fold()
    _age_changes()
    _prune()
    Ticket.objects.using(DB).filter(pk=ticket.pk).update(state="closed")
    _fold()
    changes = Change.objects.using(DB).filter(object_id=str(ticket.pk)).order_by("id")
    assert [c.diff for c in changes] == [{"title": ["t0", "renamed"]}, {"state": ["open", "closed"]}]


def test_changes_without_an_object_keep_their_newest_as_the_batched_delete_does(partitioned):
    """Object-less changes (an event model without pgh_obj, schema changes) of one table and model are one
    object: the partition drop keeps the newest and drops the others, as the batched delete does
    (tests/test_change_retention.py), and a dry run counts them."""
    for title in ("a", "b", "c"):
        Note.objects.using(DB).create(title=title)
    fold.fold("testapp_noteevent", using=DB)
    _write(25)
    _fold()
    objectless = Change.objects.using(DB).filter(object_id=None).order_by("event_id")
    newest = objectless.last().id
    _age_changes()
    assert _prune(dry_run=True).rows[CHANGES] == 2
    assert _prune().rows[CHANGES] == 2
    assert list(objectless.values_list("id", flat=True)) == [newest]


def test_a_dry_run_counts_what_the_partition_drop_would_remove_and_changes_nothing(partitioned):
    """The dry run counts the aged changes that are not the latest of their object; no partition goes."""
    tickets = _write(12)
    for ticket in tickets[:4]:
        ticket.state = "closed"
        ticket.save(using=DB)
    _write(15)
    _fold()
    _age_changes()
    names = [p.name for p in _parts()]
    count = Change.objects.using(DB).count()
    report = _prune(dry_run=True)
    assert report.rows[CHANGES] == 4
    assert [p.name for p in _parts()] == names and Change.objects.using(DB).count() == count


def test_the_dashboard_estimates_a_partitioned_feed_from_its_partitions(partitioned):
    """A partitioned table has no row estimate of its own: the dashboard sums its partitions'."""
    _write(25)
    _fold()
    for part in _parts():  # as autovacuum does: the partitions, never the partitioned table
        _sql(f'ANALYZE "{part.name}"')
    assert queries.estimate_rows(CHANGES, using=DB) == 25


def test_a_second_prune_replaces_the_partition_the_first_one_kept(partitioned):
    """The partition holding the kept changes ages like any other: a later change of one of its objects
    lets the next prune drop the kept one, in a new partition of the same range."""
    tickets = _write(12)
    _write(15)
    _fold()
    _age_changes()
    _prune()
    kept = next(p for p in _parts() if not p.default)
    tickets[0].state = "closed"
    tickets[0].save(using=DB)
    _fold()
    report = _prune()  # only the kept partition is aged now
    assert report.rows[CHANGES] == 1
    assert list(
        Change.objects.using(DB).filter(object_id=str(tickets[0].pk)).values_list("diff", flat=True)
    ) == [{"state": ["open", "closed"]}]
    first = next(p for p in _parts() if not p.default)
    assert first.name != kept.name and (first.lower, first.upper) == (kept.lower, kept.upper)
    assert Change.objects.using(DB).count() == 27


def test_a_dry_run_counts_a_context_whose_only_changes_go_with_the_partitions_replaced(partitioned):
    """Changes dropped with their partitions refer to their context no more: the dry run foresees it."""
    with audit_stream.context(user="gone"):
        tickets = _write(12)
    for ticket in tickets:  # each ticket's latest change, without a context
        ticket.state = "closed"
        ticket.save(using=DB)
    _write(15)
    _fold()
    ContextCount.objects.using(DB).update(events=0)  # as if its events were pruned: its changes alone left
    _age_changes()
    _sql("UPDATE audit_stream_context SET updated_at = updated_at - interval '1 day'")
    policy = retention.Policy(max_age=timedelta(days=90))
    foreseen = retention.prune(using=DB, overrides=policy, dry_run=True).rows["audit_stream_context"]
    pruned = retention.prune(using=DB, overrides=policy).rows["audit_stream_context"]
    assert foreseen == pruned == 1
    assert not Context.objects.using(DB).exists()
