"""Unreferenced contexts: pruned from per-context counts, never one something still refers to.

A trigger on the change feed counts, per context, its folded events
(audit_stream.retention.references); retention and erasure subtract the folded
events they delete. A context is garbage when it is over an hour old, no
folded event is counted for it, no change carries it and no unfolded event
(or row log entry) refers to it. The dry run counts what the same run deletes,
the contexts its own event and change deletes free included.
"""

import io
import json
import threading
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.db import connection, connections
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

import audit_stream
from audit_stream import retention
from audit_stream.models import Change, Context, ContextCount
from audit_stream.retention import contexts, foresight, references
from audit_stream.stream import fold
from tests.test_retention import _backdate as _age  # rows made to look old (set-up only)
from tests.testapp.models import Product, ProductEvent, Supplier

pytestmark = pytest.mark.django_db(transaction=True)

PRODUCTS = "testapp.ProductEvent"
EVENTS = "testapp_productevent"
ROW_LOG = "audit_stream_row_log"


def _in_context(user: str, n: int = 1) -> list[Product]:
    """``n`` products written inside the context ``user``."""
    with audit_stream.context(user=user):
        return [Product.objects.create(name=f"{user} {i}") for i in range(n)]


def _context(user: str):
    return Context.objects.get(metadata__user=user).id


def _counted() -> dict:
    return dict(ContextCount.objects.values_list("context_id", "events"))


def _prune_contexts(*, dry_run: bool = False) -> int:
    return contexts.prune_contexts(connection, timezone.now(), 1000, dry_run)


def _forget_changes() -> None:
    """Every change gone, as change retention would take them (the counts keep the events)."""
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM audit_stream_change")


def test_folding_counts_each_contexts_events():
    """Each change written adds one to its context's count of folded events."""
    _in_context("a", 2)
    _in_context("b", 1)
    Product.objects.create(name="no context")
    fold.fold(EVENTS)
    assert _counted() == {_context("a"): 2, _context("b"): 1}


def test_pruning_events_takes_them_from_their_contexts_counts(settings):
    """Each batch subtracts the events it deleted from their contexts' counts, in its own statement."""
    _in_context("a", 3)
    _in_context("b", 2)
    fold.fold(EVENTS)
    _age(EVENTS, "pgh_created_at", 100, where="name IN ('a 0', 'a 1', 'b 0')")
    settings.AUDIT_STREAM = {"RETENTION": {PRODUCTS: {"max_age": "90d"}}}
    assert retention.prune(targets=[PRODUCTS], batch_size=2).rows[EVENTS] == 3
    assert _counted() == {_context("a"): 1, _context("b"): 1}


def test_a_context_nothing_refers_to_is_pruned_once_an_hour_old(settings):
    """Its events and changes pruned, the context goes with its count, after the grace period."""
    _in_context("gone", 2)
    fold.fold(EVENTS)
    _age(EVENTS, "pgh_created_at", 100)
    _age("audit_stream_change", "created_at", 100)
    settings.AUDIT_STREAM = {"RETENTION": {PRODUCTS: {"max_age": "90d"}, "changes": {"max_age": "90d"}}}
    retention.prune(targets=[PRODUCTS])
    _forget_changes()
    assert _prune_contexts() == 0  # less than an hour old
    _age("audit_stream_context", "updated_at", 1)
    assert _prune_contexts() == 1
    assert not Context.objects.exists() and not ContextCount.objects.exists()


def test_the_dry_run_counts_exactly_the_contexts_the_run_deletes():
    """Of contexts referred to in every way and not at all, the dry run counts those the run deletes."""
    _in_context("folded", 1)
    _in_context("changed", 1)
    _in_context("loose 1", 1)
    _in_context("loose 2", 1)
    fold.fold(EVENTS)
    _in_context("unfolded", 1)
    with connection.cursor() as cursor:  # the loose contexts' events gone, their counts subtracted
        cursor.execute(
            "UPDATE audit_stream_context_count SET events = 0 WHERE context_id IN"
            " (SELECT id FROM audit_stream_context WHERE metadata->>'user' LIKE 'loose%%')"
        )
        cursor.execute("DELETE FROM audit_stream_change WHERE context_id <> %s", [_context("changed")])
        cursor.execute(
            "UPDATE audit_stream_context_count SET events = 0 WHERE context_id = %s", [_context("changed")]
        )
    _age("audit_stream_context", "updated_at", 1)
    assert _prune_contexts(dry_run=True) == 2
    assert _prune_contexts() == 2
    assert sorted(Context.objects.values_list("metadata__user", flat=True)) == [
        "changed",
        "folded",
        "unfolded",
    ]


def test_the_context_of_a_folded_event_is_kept_by_its_count():
    """A folded event whose change was pruned is found by its context's count alone."""
    _in_context("kept")
    fold.fold(EVENTS)
    _forget_changes()
    _age("audit_stream_context", "updated_at", 1)
    assert _prune_contexts(dry_run=True) == 0
    assert _prune_contexts() == 0
    assert Context.objects.filter(id=_context("kept")).exists()


def test_the_context_of_a_change_is_kept():
    """A change carries its context: kept while the change is, whatever the count says."""
    _in_context("kept")
    fold.fold(EVENTS)
    ContextCount.objects.update(events=0)  # as if its event were pruned
    _age("audit_stream_context", "updated_at", 1)
    assert _prune_contexts() == 0
    assert Change.objects.filter(context_id=_context("kept")).exists()


def test_the_context_of_an_unfolded_event_is_kept():
    """An event not folded yet has no change and no count: found in the table's unfolded range."""
    Product.objects.create(name="folded, so the table has a checkpoint")
    fold.fold(EVENTS)
    _in_context("kept")
    _age("audit_stream_context", "updated_at", 1)
    assert _counted() == {}
    assert _prune_contexts(dry_run=True) == 0
    assert _prune_contexts() == 0


def test_the_context_of_an_event_in_a_table_never_folded_is_kept():
    """A table without a checkpoint: every event may be unfolded, its contexts read from the table."""
    _in_context("kept")
    _age("audit_stream_context", "updated_at", 1)
    assert _prune_contexts() == 0


@pytest.fixture
def logged():
    call_command("initlogging", stdout=io.StringIO())
    yield
    call_command("droplogging", stdout=io.StringIO())


def test_the_context_of_a_row_log_entry_is_kept_folded_or_not(logged):
    """Row log entries count like events: an unfolded one is read, a folded one counted."""
    with audit_stream.context(user="folded"):
        Supplier.objects.create(name="Acme")
    fold.fold(ROW_LOG)
    _forget_changes()
    with audit_stream.context(user="unfolded"):
        Supplier.objects.create(name="Bolt")
    _age("audit_stream_context", "updated_at", 1)
    assert _counted() == {_context("folded"): 1}
    assert _prune_contexts() == 0


def test_a_context_attached_during_the_prune_is_kept():
    """A writer that attaches an old context while the DELETE waits for its row makes the DELETE skip it."""
    _in_context("revived")
    fold.fold(EVENTS)
    _forget_changes()
    ContextCount.objects.update(events=0)
    _age("audit_stream_context", "updated_at", 1)
    writer = connections.create_connection("default")
    try:
        writer.set_autocommit(False)
        with writer.cursor() as cursor:  # the attach refreshes updated_at: the row stays locked
            cursor.execute(
                "SELECT _audit_stream_attach_context(%s, %s)", [_context("revived"), '{"user": "revived"}']
            )
            cursor.execute("SELECT pg_backend_pid()")
        result = {}
        pruner = threading.Thread(target=lambda: result.update(deleted=_pruned_by_another_connection()))
        pruner.start()
        _wait_for_a_lock_wait()
        writer.commit()
        pruner.join(timeout=30)
    finally:
        writer.close()
    assert result == {"deleted": 0}
    assert Context.objects.filter(metadata__user="revived").exists()


def test_a_batch_locks_its_objects_counts_before_its_contexts_as_the_fold_does(settings):
    """Waiting for an object's count, a batch holds no context's count: it and a fold never deadlock."""
    (product,) = _in_context("busy")
    with audit_stream.context(user="busy, later"):
        for price in range(1, 4):
            Product.objects.filter(pk=product.pk).update(price=price)
    fold.fold(EVENTS)
    settings.AUDIT_STREAM = {"RETENTION": {PRODUCTS: {"keep_last": 1}}}
    blocker = connections.create_connection("default")
    try:
        blocker.set_autocommit(False)
        with blocker.cursor() as cursor:  # a fold's transaction, past its objects' counts
            cursor.execute(
                "SELECT FROM audit_stream_object_count WHERE event_table = %s AND object_id = %s FOR UPDATE",
                [EVENTS, str(product.pk)],
            )
        result = {}
        pruner = threading.Thread(target=lambda: result.update(rows=_pruned_events_by_another_connection()))
        pruner.start()
        _wait_for_a_lock_wait("%WITH batch AS%")
        with connection.cursor() as cursor:  # not locked by the waiting batch (NOWAIT would raise)
            cursor.execute(
                "SELECT count(*) FROM (SELECT FROM audit_stream_context_count FOR UPDATE NOWAIT) AS c"
            )
            assert cursor.fetchone()[0] == 2
        blocker.commit()
        pruner.join(timeout=30)
    finally:
        blocker.close()
    assert result == {"rows": 3}
    assert _counted() == {_context("busy"): 0, _context("busy, later"): 1}


def _pruned_events_by_another_connection() -> int:
    try:
        return retention.prune(targets=[PRODUCTS]).rows[EVENTS]
    finally:
        connections.close_all()


def _pruned_by_another_connection() -> int:
    try:
        return _prune_contexts()
    finally:
        connections.close_all()


def _wait_for_a_lock_wait(query: str = "%DELETE FROM audit_stream_context%", timeout: float = 30) -> None:
    """Until a session whose statement is like ``query`` waits for a lock on this database."""
    deadline = timezone.now() + timedelta(seconds=timeout)
    with connection.cursor() as cursor:
        while timezone.now() < deadline:
            cursor.execute(
                "SELECT EXISTS (SELECT FROM pg_stat_activity WHERE datname = current_database()"
                " AND wait_event_type = 'Lock' AND query LIKE %s)",
                [query],
            )
            if cursor.fetchone()[0]:
                return
    raise AssertionError(f"no statement like {query!r} waited for a lock")


def test_erasure_takes_the_objects_folded_events_from_their_contexts_counts():
    """Erased events leave their contexts' counts: folded ones only (an unfolded one was never counted)."""
    (product,) = _in_context("a")
    _in_context("b")
    fold.fold(EVENTS)
    with audit_stream.context(user="a, later"):
        Product.objects.filter(pk=product.pk).update(price=1)  # not folded
    retention.erase("testapp.Product", str(product.pk))
    assert _counted() == {_context("a"): 0, _context("b"): 1}


def test_the_counts_of_existing_history_are_rebuilt_by_the_backfill():
    """The migration counts every event of each table, folded or not (an unfolded one errs upwards)."""
    _in_context("a", 2)
    fold.fold(EVENTS)
    _in_context("b", 1)
    ContextCount.objects.all().delete()
    references.backfill(connection)
    assert _counted() == {_context("a"): 2, _context("b"): 1}


@pytest.mark.parametrize("foreseen", [False, True], ids=["run", "dry run"])
def test_contexts_are_checked_without_reading_an_event_table(foreseen):
    """Folded events are counted and unfolded ones a range of pgh_xid: no event table is read whole.

    Nor by a dry run's, which also reads what its deletes noted (foresight).
    """
    for i in range(20):
        _in_context(f"u{i}", 50)
    fold.fold(EVENTS)
    _in_context("unfolded", 1)
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {EVENTS}, audit_stream_change, audit_stream_context")
    params = {"grace": timezone.now()}
    with connection.cursor() as cursor:
        if foreseen:
            foresight.create(cursor)
        sql = contexts.candidates(connection, cursor, params, foreseen=foreseen)
        cursor.execute(f"EXPLAIN (ANALYZE, FORMAT JSON) SELECT count(*) FROM ({sql}) AS c", params)
        plan = cursor.fetchone()[0]
    plan = (json.loads(plan) if isinstance(plan, str) else plan)[0]["Plan"]
    read = _read(plan, EVENTS)
    assert read <= 1, f"read {read} of {ProductEvent.objects.count()} events"


def _read(plan: dict, relation: str) -> int:
    """Rows the plan read from ``relation``: returned and filtered out, every loop."""
    nodes, total = [plan], 0
    while nodes:
        node = nodes.pop()
        nodes.extend(node.get("Plans", []))
        if node.get("Relation Name") == relation:
            total += (node["Actual Rows"] + node.get("Rows Removed by Filter", 0)) * node["Actual Loops"]
    return total


def test_an_empty_event_table_costs_a_run_no_query_of_its_own(settings):
    """Which tables are empty is read once for the run: more empty targets, no more queries."""
    settings.AUDIT_STREAM = {"RETENTION": {}}
    policy = retention.Policy(keep_last=1)
    with CaptureQueriesContext(connection) as one:
        retention.prune(targets=[PRODUCTS], overrides=policy, dry_run=True)
    with CaptureQueriesContext(connection) as three:
        retention.prune(
            targets=[PRODUCTS, "testapp.OrderEvent", "testapp.BookEvent"], overrides=policy, dry_run=True
        )
    assert len(three.captured_queries) == len(one.captured_queries)


# The dry run foresees the contexts the same run frees (issue 24): each test
# checks the dry run's count against the run's and the contexts actually gone.

OLD_PRODUCTS = {PRODUCTS: {"max_age": "90d"}}


def _dry_run_then_run(**prune) -> int:
    """Contexts counted by a dry run of ``retention.prune(**prune)``, by the run, and gone: all equal."""
    _age("audit_stream_context", "updated_at", 1)
    before = Context.objects.count()
    foreseen = retention.prune(dry_run=True, **prune).rows.get("audit_stream_context", 0)
    pruned = retention.prune(**prune).rows.get("audit_stream_context", 0)
    assert (foreseen, pruned) == (before - Context.objects.count(),) * 2
    return pruned


def test_the_dry_run_counts_a_context_whose_only_events_the_run_deletes(settings):
    """Its folded events deleted by the run's batches, the context goes too: the dry run counts it."""
    _in_context("gone", 2)
    fold.fold(EVENTS)
    _forget_changes()
    _age(EVENTS, "pgh_created_at", 100)
    settings.AUDIT_STREAM = {"RETENTION": OLD_PRODUCTS}
    assert _dry_run_then_run() == 1


def test_the_dry_run_counts_a_context_whose_only_change_the_run_deletes(settings):
    """A change the run deletes (not its object's latest) refers to its context no more."""
    (product,) = _in_context("gone")
    Product.objects.filter(pk=product.pk).update(stock=1)  # the latest change, without a context
    fold.fold(EVENTS)
    _age(EVENTS, "pgh_created_at", 100)
    settings.AUDIT_STREAM = {"RETENTION": {**OLD_PRODUCTS, "changes": {"max_age": "90d"}}}
    retention.prune(targets=[PRODUCTS])  # the events gone first: the change alone refers to it
    assert Context.objects.filter(id=_context("gone")).exists()
    _age("audit_stream_change", "created_at", 100)
    assert _dry_run_then_run() == 1


def test_a_context_also_referred_to_by_a_kept_event_or_change_is_not_counted(settings):
    """Only a context left with no reference is counted: a kept event or a kept change keeps one."""
    with audit_stream.context(user="kept by its change"):  # two changes: the older goes, the latest stays
        changed = Product.objects.create(name="c")
        Product.objects.filter(pk=changed.pk).update(stock=1)
    _in_context("gone")
    with audit_stream.context(user="kept by its event"):
        product = Product.objects.create(name="p")
        Product.objects.filter(pk=product.pk).update(stock=1)  # the newest event: kept
    fold.fold(EVENTS)
    Change.objects.exclude(context_id=_context("kept by its change")).delete()
    newest = ProductEvent.objects.filter(pgh_obj_id=product.pk).latest("pgh_id").pgh_id
    _age(EVENTS, "pgh_created_at", 100, where=f"pgh_id < {newest}")
    _age("audit_stream_change", "created_at", 100)
    settings.AUDIT_STREAM = {"RETENTION": {**OLD_PRODUCTS, "changes": {"max_age": "90d"}}}
    assert _dry_run_then_run() == 1
    assert set(Context.objects.values_list("metadata__user", flat=True)) == {
        "kept by its event",
        "kept by its change",
    }


@pytest.mark.parametrize("checkpoint", [True, False], ids=["folded table", "table never folded"])
def test_the_dry_run_counts_a_context_whose_unfolded_events_the_forced_run_deletes(settings, checkpoint):
    """With ``force``, unfolded events go too: read from the table by the run's contexts step, and gone."""
    if checkpoint:
        Product.objects.create(name="folded, so the table has a checkpoint")
        fold.fold(EVENTS)
    _in_context("gone", 2)
    _age(EVENTS, "pgh_created_at", 100)
    settings.AUDIT_STREAM = {"RETENTION": OLD_PRODUCTS}
    assert _dry_run_then_run(force=True) == 1


def test_the_dry_run_counts_a_context_whose_only_row_log_entry_the_run_deletes(settings, logged):
    """The row log is pruned and foreseen like an event table."""
    with audit_stream.context(user="gone"):
        Supplier.objects.create(name="Acme")
    fold.fold(ROW_LOG)
    _forget_changes()
    _age(ROW_LOG, "pgh_created_at", 100)
    settings.AUDIT_STREAM = {"RETENTION": {"row_log": {"max_age": "90d"}}}
    assert _dry_run_then_run() == 1


def test_the_dry_run_prunes_contexts_for_restricted_targets_as_the_run_does(settings):
    """Restricted to an event table that loses events, both count; to the change feed alone, neither."""
    _in_context("gone")
    (changed,) = _in_context("changed")
    fold.fold(EVENTS)
    Change.objects.exclude(context_id=_context("changed")).delete()
    _age(EVENTS, "pgh_created_at", 100)
    _age("audit_stream_change", "created_at", 100)
    settings.AUDIT_STREAM = {"RETENTION": {**OLD_PRODUCTS, "changes": {"max_age": "90d"}}}
    assert _dry_run_then_run(targets=[PRODUCTS]) == 1  # "changed" keeps its change: not a target
    Product.objects.filter(pk=changed.pk).update(stock=1)  # its change no longer the latest
    fold.fold(EVENTS)
    assert "audit_stream_context" not in retention.prune(targets=["changes"], dry_run=True).rows
    assert "audit_stream_context" not in retention.prune(targets=["changes"]).rows
    assert Context.objects.filter(id=_context("changed")).exists()
