"""Partitioned event tables: conversion, partitions ahead, the stream on them, retention by partition.

Ticket's event table is partitioned by the first test that needs it (10 ids per
partition) and stays so for the session: it is used by these tests alone.
The rest of the suite runs on partitioned tables too when AUDIT_STREAM_SETTINGS
declares PARTITIONS (README, "Partitioned history").
"""

import threading
from datetime import timedelta

import pytest
from django.db import DatabaseError, connection, transaction

import audit_stream
from audit_stream import grants, partitions, retention
from audit_stream.dashboard import queries
from audit_stream.models import Change, Context, ContextCount
from audit_stream.retention import drops
from audit_stream.stream import fold
from tests.testapp.models import Ticket, TicketEvent

pytestmark = pytest.mark.django_db(transaction=True)

TICKETS = "testapp_ticketevent"
LAYOUT = partitions.Layout(TICKETS, size=10, ahead=2)


@pytest.fixture
def partitioned(settings):
    """TicketEvent's table, partitioned by ranges of 10 ids (converted once), with partitions ahead."""
    settings.AUDIT_STREAM = {**getattr(settings, "AUDIT_STREAM", {}), "FOLD_LINGER": 0}
    settings.AUDIT_STREAM["PARTITIONS"] = {"testapp.TicketEvent": {"size": 10, "ahead": 2}}
    partitions.sync()
    return LAYOUT


def _parts():
    with connection.cursor() as cursor:
        return partitions.partitions(cursor, TICKETS)


def _write(count: int, state: str = "open") -> list[Ticket]:
    return [Ticket.objects.create(title=f"t{i}", state=state) for i in range(count)]


def _age_events() -> None:
    """Move every ticket event 100 days back (set-up only: bypasses append-only), with its partition's bound.

    The partitions the sequence has passed get their time bound first
    (:func:`partitions.ensure`), then that bound moves back with the events.
    """
    partitions.ensure(LAYOUT)
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL session_replication_role = replica")
        cursor.execute(f"UPDATE {TICKETS} SET pgh_created_at = pgh_created_at - interval '100 days'")
        for part in partitions.partitions(cursor, TICKETS):
            if part.full_before is not None:
                bound = part.full_before - timedelta(days=100)
                cursor.execute(
                    f"COMMENT ON TABLE {part.name} IS %s", [f"audit_stream: full before {bound.isoformat()}"]
                )


def test_converting_keeps_every_event_and_id_and_the_append_only_trigger(settings):
    """An unpartitioned table with events becomes partitioned: same rows, ids go on, DELETE still refused."""
    with connection.cursor() as cursor:
        already = partitions.is_partitioned(cursor, TICKETS)
    before = _write(3)
    ids = list(TicketEvent.objects.order_by("pgh_id").values_list("pgh_id", flat=True))
    settings.AUDIT_STREAM = {"PARTITIONS": {"testapp.TicketEvent": {"size": 10, "ahead": 2}}}
    converted = partitions.sync()
    assert converted == ([] if already else [TICKETS])
    with connection.cursor() as cursor:
        assert partitions.is_partitioned(cursor, TICKETS)
    assert list(TicketEvent.objects.order_by("pgh_id").values_list("pgh_id", flat=True)) == ids
    after = _write(1)[0]
    newest = TicketEvent.objects.order_by("-pgh_id").first()
    assert newest.pgh_obj_id == after.pk and newest.pgh_id > max(ids)
    with pytest.raises(DatabaseError, match="history is append-only"), transaction.atomic():
        TicketEvent.objects.filter(pgh_obj_id=before[0].pk).delete()


def test_partitions_are_kept_ahead_of_the_id_sequence(partitioned):
    """After 25 writes, `ahead` empty ranges of 10 ids wait past the newest id; the default stays empty."""
    _write(25)
    partitions.ensure(partitioned)
    newest = TicketEvent.objects.order_by("-pgh_id").first().pgh_id
    ranged = [p for p in _parts() if not p.default]
    assert max(p.upper for p in ranged) >= newest + 1 + 2 * 10
    with connection.cursor() as cursor:
        assert not partitions.default_rows(cursor, TICKETS)


def test_the_fold_takes_every_event_across_partitions_once_in_order(partitioned):
    """Events spread over several partitions become one change each, diffed against the previous one."""
    tickets = _write(12)
    for ticket in tickets:
        ticket.state = "closed"
        ticket.save()
    assert fold.fold(TICKETS).folded == 24
    assert fold.fold(TICKETS).folded == 0
    changes = Change.objects.filter(event_table=TICKETS)
    assert changes.count() == 24
    closed = changes.filter(object_id=str(tickets[5].pk)).order_by("event_id").last()
    assert closed.diff == {"state": ["open", "closed"]}


def test_retention_drops_old_folded_partitions_and_deletes_only_in_the_straddling_one(partitioned):
    """Aged, folded, full partitions are dropped whole; the partition still filling is pruned row by row."""
    _write(25)
    fold.fold(TICKETS)
    newest = TicketEvent.objects.order_by("-pgh_id").first().pgh_id
    _age_events()
    full = [p.name for p in _parts() if p.full_before is not None]
    assert full  # at least two full partitions of 10
    report = retention.prune(
        targets=["testapp.TicketEvent"], overrides=retention.Policy(max_age=timedelta(days=90))
    )
    assert report.rows[TICKETS] == 25
    assert TicketEvent.objects.count() == 0
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_class WHERE relname = ANY(%s)", [full])
        assert cursor.fetchone()[0] == 0  # dropped, not merely detached
    straddling = [p for p in _parts() if not p.default and (p.lower or 0) <= newest < p.upper]
    assert straddling and straddling[0].name not in full  # kept: its aged events were deleted in batches


def test_a_prune_interrupted_between_the_detach_and_the_drop_leaves_nothing_behind(partitioned):
    """Partitions detached by a prune that died before dropping them are dropped by the next prune."""
    _write(25)
    fold.fold(TICKETS)
    _age_events()
    lowest = [p.name for p in _parts() if p.full_before is not None][:1]
    drops._detach(connection, TICKETS, lowest)  # the first step of a prune, then the worker is killed
    assert lowest[0] not in [p.name for p in _parts()]
    retention.prune(targets=["testapp.TicketEvent"], overrides=retention.Policy(max_age=timedelta(days=90)))
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_class WHERE relname = %s", lowest)
        assert cursor.fetchone()[0] == 0


def test_a_writer_holding_the_table_makes_the_detach_wait_and_retry_not_fail(partitioned):
    """The detach gives up its lock wait after a short timeout (no queue of writers behind it) and retries
    until the writer's transaction ends; the prune then drops the partitions."""
    _write(25)
    fold.fold(TICKETS)
    _age_events()
    full = [p.name for p in _parts() if p.full_before is not None]
    holding, release = threading.Event(), threading.Event()

    def writer():  # a writer's open transaction holds the table (ROW EXCLUSIVE) past two lock timeouts
        try:
            with transaction.atomic():
                Ticket.objects.create(title="slow writer")
                holding.set()
                release.wait(10)
        finally:
            connection.close()

    thread = threading.Thread(target=writer)
    thread.start()
    assert holding.wait(10)
    attempts = []
    original = drops._detach

    def counted(*args):
        attempts.append(1)
        if len(attempts) == 3:
            release.set()  # the writer commits once the detach has given up twice
        return original(*args)

    drops._detach = counted
    try:
        report = retention.prune(
            targets=["testapp.TicketEvent"], overrides=retention.Policy(max_age=timedelta(days=90))
        )
    finally:
        drops._detach = original
        release.set()
        thread.join()
    assert len(attempts) >= 3
    assert report.rows[TICKETS] == 25 and not report.errors
    assert not set(full) & {p.name for p in _parts()}


def test_dropping_a_partition_takes_its_events_from_their_contexts_counts(partitioned):
    """A dropped partition's folded events leave their context's count, as the batches' events do."""
    with audit_stream.context(user="tickets"):
        _write(25)
    fold.fold(TICKETS)
    context = Context.objects.get(metadata__user="tickets").id
    assert ContextCount.objects.get(context_id=context).events == 25
    _age_events()
    retention.prune(targets=["testapp.TicketEvent"], overrides=retention.Policy(max_age=timedelta(days=90)))
    assert ContextCount.objects.get(context_id=context).events == 0


def test_a_partition_left_detached_by_an_interrupted_prune_leaves_its_contexts_counts_when_dropped(
    partitioned,
):
    """Its events are taken off their context's count once, by the prune that drops it."""
    with audit_stream.context(user="tickets"):
        _write(25)
    fold.fold(TICKETS)
    context = Context.objects.get(metadata__user="tickets").id
    _age_events()
    lowest = [p for p in _parts() if p.full_before is not None][:1]
    drops._detach(
        connection, TICKETS, [lowest[0].name]
    )  # the first step of a prune, then the worker is killed
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT count(*) FROM {lowest[0].name}")
        detached = cursor.fetchone()[0]
    assert ContextCount.objects.get(context_id=context).events == 25
    drops.drop_leftovers(connection, TICKETS, contexts=True)
    assert ContextCount.objects.get(context_id=context).events == 25 - detached


def test_a_partition_holding_an_unfolded_event_is_never_dropped(partitioned):
    """An aged, full partition with one unfolded event stays, with every later one; the folded ones go."""
    _write(10)
    fold.fold(TICKETS)
    _write(25)  # unfolded, from the partition the first writes ended in
    first_unfolded = TicketEvent.objects.order_by("pgh_id")[10].pgh_id
    _age_events()
    report = retention.prune(
        targets=["testapp.TicketEvent"], overrides=retention.Policy(max_age=timedelta(days=90))
    )
    assert report.rows[TICKETS] == 10  # the folded ones only
    assert TicketEvent.objects.count() == 25
    assert not TicketEvent.objects.filter(pgh_id__lt=first_unfolded).exists()
    kept = [p for p in _parts() if not p.default]
    assert kept[0].upper > first_unfolded and (kept[0].lower or 0) <= first_unfolded


def test_the_dashboard_warns_when_the_default_partition_holds_events(partitioned):
    """An id past every range lands in the default partition, and the table's row says so."""
    ranged = [p for p in _parts() if not p.default]
    with connection.cursor() as cursor:
        cursor.execute(f"ALTER TABLE {TICKETS} ALTER pgh_id RESTART WITH %s", [max(p.upper for p in ranged)])
    _write(1)
    table = next(t for t in queries.stream_tables() if t.event_table == TICKETS)
    assert table.rows_in_default_partition
    partitions.ensure(partitioned)  # creates the missing range and moves the event into it
    table = next(t for t in queries.stream_tables() if t.event_table == TICKETS)
    assert not table.rows_in_default_partition
    assert TicketEvent.objects.count() == 1


def test_the_grants_keep_the_partitions_of_history_read_only(partitioned):
    """A partition is history too: the runtime role may read it, never write it (its parent's trigger
    does not fire for a statement that names the partition)."""
    _write(3)
    statements = grants.statements("runtime_role_never_created")
    for part in _parts():
        table = f'"public"."{part.name}"'
        mine = [sql for sql in statements if f" {table} " in sql]
        assert f'GRANT SELECT ON TABLE {table} TO "runtime_role_never_created";' in mine, mine
        assert not any("INSERT" in sql or "DELETE" in sql for sql in mine if sql.startswith("GRANT")), mine


def test_converting_leaves_pgtrigger_every_trigger_installed_and_none_to_prune(partitioned):
    """The append-only trigger moves to the partitioned table with pgtrigger's hash (installed, not
    outdated), and no partition keeps a trigger that no model declares (`pgtrigger prune` would drop it)."""
    from pgtrigger import installation, registry

    assert not [row for row in installation.prunable() if row[0].startswith(TICKETS)]
    for uri, (model, trigger) in registry._registry.items():
        if model is TicketEvent:
            assert trigger.get_installation_status(model)[0] == "INSTALLED", uri


def _dry_run_then_run_contexts() -> int:
    """Contexts counted by a dry run of a 90-day prune, by the run, and gone: all equal; their number."""
    with connection.cursor() as cursor:  # past the hour's grace
        cursor.execute("UPDATE audit_stream_context SET updated_at = updated_at - interval '1 day'")
    before = Context.objects.count()
    policy = retention.Policy(max_age=timedelta(days=90))
    foreseen = retention.prune(overrides=policy, dry_run=True).rows["audit_stream_context"]
    pruned = retention.prune(overrides=policy).rows["audit_stream_context"]
    assert (foreseen, pruned) == (before - Context.objects.count(),) * 2
    return pruned


def test_a_dry_run_counts_a_context_whose_events_go_with_the_partitions_the_run_drops(partitioned):
    """The dropped partitions' events leave their contexts' counts in the run: the dry run foresees it."""
    with audit_stream.context(user="tickets"):
        _write(25)
    fold.fold(TICKETS)
    Change.objects.all().delete()  # the events alone refer to the context
    _age_events()
    assert _dry_run_then_run_contexts() == 1


def test_a_dry_run_counts_a_context_whose_events_are_in_a_partition_left_detached(partitioned):
    """A partition an interrupted prune detached is dropped first by the run: the dry run foresees it."""
    with audit_stream.context(user="tickets"):
        _write(5)
    fold.fold(TICKETS)
    Change.objects.all().delete()
    _write(25)  # without a context, past the partition of the context's events
    fold.fold(TICKETS)
    _age_events()
    first = TicketEvent.objects.exclude(pgh_context=None).order_by("pgh_id")[0].pgh_id
    (part,) = [p for p in _parts() if not p.default and (p.lower or 0) <= first < p.upper]
    drops._detach(connection, TICKETS, [part.name])  # then the worker is killed
    assert _dry_run_then_run_contexts() == 1
