"""Fold lanes: one table folded by several workers at once, each object in one lane, each event once.

The fault tests (tests/faults) and the concurrency tests (test_fold_concurrency)
also run with 4 lanes; these tests are about what lanes add: parallel folds of
one table, the split by object, a change of the number of lanes, and the
places that read a table's checkpoint (retention, dispatch, the settings check).
"""

import itertools
import os
import re
import threading
import time
from datetime import timedelta

import psycopg
import pytest
import redis
from django.db import connection, connections, transaction

from audit_stream import retention
from audit_stream.checks import check_fold_lanes
from audit_stream.models import Change, Checkpoint
from audit_stream.stream import fold, lanes, wakeup
from tests.procs import start_listener, start_worker, wait_until
from tests.testapp.models import Product, ProductEvent

pytestmark = pytest.mark.django_db(transaction=True)

PRODUCTS = "testapp_productevent"
LABEL = "testapp.ProductEvent"


def _lanes(settings, count, **more):
    settings.AUDIT_STREAM = {"FOLD_LANES": {LABEL: count}, **more}


def _write(objects=40, updates=3, prefix="p"):
    """``objects`` products, each then updated ``updates`` times (prices 1, 2, ...): events in order."""
    products = Product.objects.bulk_create([Product(name=f"{prefix}{i}", price=0) for i in range(objects)])
    for price in range(1, updates + 1):
        for product in products:
            Product.objects.filter(pk=product.pk).update(price=price)
    return products


def _lane_of(event_id: int, count: int) -> int:
    """The lane of an event's object, by the fold's own definition (lanes.LANE_OF)."""
    sql = lanes.LANE_OF.replace("{object_id}", "e.pgh_obj_id::text")
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT {sql} FROM {PRODUCTS} AS e WHERE e.pgh_id = %(id)s", {"id": event_id, "lanes": count}
        )
        return cursor.fetchone()[0]


def _assert_each_event_once_and_in_order():
    """Every event of the table has exactly one Change, and each object's diffs chain in event order."""
    events = ProductEvent.objects.count()
    changes = Change.objects.filter(event_table=PRODUCTS)
    assert changes.count() == events
    assert changes.values("event_id").distinct().count() == events
    by_object: dict[str, list] = {}
    for change in changes.order_by("event_id"):
        by_object.setdefault(change.object_id, []).append(change)
    for chain in by_object.values():
        for before, after in itertools.pairwise(chain):
            # The diff's old values are the previous change's snapshot: diffed against the right state.
            for column, (old, _) in after.diff.items():
                assert str(before.snapshot[column]) == str(old), (column, before.snapshot, after.diff)


@pytest.fixture
def other_connection():
    conn = psycopg.connect(**connection.get_connection_params())
    yield conn
    conn.close()


def test_every_lane_folds_only_its_own_objects_and_all_lanes_fold_each_event_once(settings):
    """Folded lane by lane, each lane takes its share of the objects; together, every event once, in order."""
    _lanes(settings, 4)
    _write(objects=40, updates=3)
    folded = [fold.fold(PRODUCTS, lane=lane).folded for lane in range(4)]
    assert all(folded) and sum(folded) == ProductEvent.objects.count() == 160
    _assert_each_event_once_and_in_order()
    # Each object lives in one lane: its events were all folded by the same lane's fold.
    lane_of_object = {}
    for event_id, object_id in Change.objects.values_list("event_id", "object_id"):
        assert lane_of_object.setdefault(object_id, _lane_of(event_id, 4)) == _lane_of(event_id, 4)
    assert sorted(Checkpoint.objects.filter(event_table=PRODUCTS).values_list("lane", "lanes")) == [
        (0, 4),
        (1, 4),
        (2, 4),
        (3, 4),
    ]


def test_a_lane_the_table_does_not_have_folds_nothing(settings):
    _lanes(settings, 2)
    _write(objects=5, updates=0)
    assert fold.fold(PRODUCTS, lane=3).folded == 0
    assert fold.fold(PRODUCTS).folded == 5


def test_two_folds_of_one_table_hold_different_lanes_at_the_same_time(settings, other_connection):
    """With 4 lanes, two folds of one table run at once: each holds its own lane's lock, neither backs off.

    Each fold is held mid-batch, after locking its lane: another session holds
    an uncommitted Change row with the key of the lane's first event, so the
    fold's INSERT waits on it. While both wait, both lanes are locked; then
    both are let go, and both finish their lane.
    """
    _lanes(settings, 4)
    fold.fold(PRODUCTS)  # the lanes' checkpoint rows exist
    _write(objects=40, updates=2)
    first_event = {}
    for event_id in ProductEvent.objects.order_by("pgh_id").values_list("pgh_id", flat=True):
        first_event.setdefault(_lane_of(event_id, 4), event_id)
    held_lanes = sorted(first_event)[:2]
    for lane in held_lanes:
        other_connection.execute(
            "INSERT INTO audit_stream_change"
            " (event_table, event_id, model, label, created_at, diff, snapshot)"
            " VALUES (%s, %s, 'testapp.product', 'blocker', now(), '{}', '{}')",
            [PRODUCTS, first_event[lane]],
        )
    results, pids = {}, {}

    def fold_lane(lane):
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            pids[lane] = cursor.fetchone()[0]
        try:
            results[lane] = fold.fold(PRODUCTS, lane=lane, max_seconds=30)
        except Exception as exc:  # pragma: no cover - reported below
            results[lane] = exc
        finally:
            connections.close_all()

    threads = [threading.Thread(target=fold_lane, args=(lane,)) for lane in held_lanes]
    for thread in threads:
        thread.start()
    waiting = "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s) AND wait_event_type = 'Lock'"
    try:
        wait_until(
            lambda: len(pids) == 2 and _query(waiting, [list(pids.values())]) == 2,
            timeout=30,
            message="both folds held mid-batch",
        )
        # Both lanes' checkpoints are locked at this moment, each by its own fold; the others are free.
        free = _query(
            "SELECT array_agg(lane ORDER BY lane) FROM (SELECT lane FROM audit_stream_checkpoint"
            " WHERE event_table = %s FOR UPDATE SKIP LOCKED) AS free",
            [PRODUCTS],
        )
        assert sorted(free) == sorted(set(range(4)) - set(held_lanes))
    finally:
        other_connection.rollback()  # let both folds go on
        for thread in threads:
            thread.join(timeout=60)
    for lane in held_lanes:
        assert not isinstance(results[lane], Exception), results[lane]
        assert not results[lane].busy and results[lane].folded > 0
    fold.fold(PRODUCTS)  # the two other lanes
    _assert_each_event_once_and_in_order()


def test_concurrent_lane_folds_under_writes_fold_each_event_once_in_order(settings):
    """Four workers, one per lane, fold while a writer keeps updating the same objects."""
    _lanes(settings, 4, FOLD_LINGER=0.05)
    products = _write(objects=30, updates=1)
    stop = threading.Event()
    errors = []

    def writer():
        price = 10
        while not stop.is_set() and price < 60:
            for product in products:
                Product.objects.filter(pk=product.pk).update(price=price)
            price += 1
        connections.close_all()

    def worker(lane):
        try:
            while not stop.is_set():
                fold.fold(PRODUCTS, lane=lane, batch_size=50, max_seconds=0.5)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=writer)] + [
        threading.Thread(target=worker, args=(i,)) for i in range(4)
    ]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: Change.objects.count() >= 600, timeout=60, message="folds under way")
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    assert not errors
    fold.fold(PRODUCTS)
    _assert_each_event_once_and_in_order()


def test_changing_the_number_of_lanes_skips_nothing_and_folds_nothing_twice(settings):
    """1 lane half-way through an interval, then 4 lanes, then 2 with the lanes at different snapshots."""
    _lanes(settings, 1)
    _write(objects=20, updates=1, prefix="a")
    result = fold.fold(PRODUCTS, batch_size=7, max_seconds=0)  # one batch: an interval half folded
    assert not result.caught_up and Checkpoint.objects.get(event_table=PRODUCTS).target is not None
    _write(objects=20, updates=1, prefix="b")

    _lanes(settings, 4)
    relaned = fold.fold(PRODUCTS, lane=2)  # any lane's fold re-lanes the table first
    # The rest of the backlog: the old lane's up to the common snapshot (then lane 2 has nothing newer).
    assert result.folded + relaned.folded == 80
    rows = Checkpoint.objects.filter(event_table=PRODUCTS)
    assert sorted(rows.values_list("lane", "lanes")) == [(lane, 4) for lane in range(4)]
    # The new lanes started at one snapshot (lane 2 has folded on from it since).
    assert len(set(rows.exclude(lane=2).values_list("snapshot", flat=True))) == 1
    assert sum(rows.values_list("folded", flat=True)) == 80
    _assert_each_event_once_and_in_order()

    _write(objects=20, updates=2, prefix="c")
    fold.fold(PRODUCTS, lane=0)  # lane 0 ahead of the three others
    _lanes(settings, 2)
    fold.fold(PRODUCTS)
    assert sorted(Checkpoint.objects.filter(event_table=PRODUCTS).values_list("lane", "lanes")) == [
        (0, 2),
        (1, 2),
    ]
    _assert_each_event_once_and_in_order()
    # The counters carried over: the table's total is still every event folded.
    counters = Checkpoint.objects.filter(event_table=PRODUCTS).values_list("folded", flat=True)
    assert sum(counters) == ProductEvent.objects.count()


def test_a_change_of_lanes_waits_while_another_fold_holds_a_lane(settings, other_connection):
    _lanes(settings, 2)
    _write(objects=10, updates=0)
    fold.fold(PRODUCTS)
    _write(objects=10, updates=0, prefix="q")
    other_connection.execute(
        "SELECT 1 FROM audit_stream_checkpoint WHERE event_table = %s AND lane = 1 FOR UPDATE", [PRODUCTS]
    )
    _lanes(settings, 3)
    result = fold.fold(PRODUCTS, lane=0)
    assert (result.busy, result.folded) == (True, 0)
    assert set(Checkpoint.objects.filter(event_table=PRODUCTS).values_list("lanes", flat=True)) == {2}
    other_connection.rollback()
    assert fold.fold(PRODUCTS).folded == 10
    assert set(Checkpoint.objects.filter(event_table=PRODUCTS).values_list("lanes", flat=True)) == {3}
    _assert_each_event_once_and_in_order()


def test_a_fold_of_the_whole_table_leaves_a_lane_another_fold_holds_and_folds_the_others(
    settings, other_connection
):
    """A lane-less fold skips a held lane (``busy``) without waiting on it, folds every other lane, and
    does not linger on the held lane's work until its deadline: that lane's holder folds it."""
    _lanes(settings, 4, FOLD_LINGER=0.2)
    fold.fold(PRODUCTS)  # the lanes' checkpoint rows exist
    _write(objects=40, updates=0)
    events = ProductEvent.objects.values_list("pgh_id", flat=True)
    held = _lane_of(min(events), 4)
    in_held = [event for event in events if _lane_of(event, 4) == held]
    other_connection.execute(
        "SELECT 1 FROM audit_stream_checkpoint WHERE event_table = %s AND lane = %s FOR UPDATE",
        [PRODUCTS, held],
    )
    started = time.monotonic()
    result = fold.fold(PRODUCTS, max_seconds=10)
    elapsed = time.monotonic() - started
    assert result.busy and result.folded == 40 - len(in_held)
    assert elapsed < 5  # it did not spin on the held lane's events until max_seconds
    other_connection.rollback()
    assert fold.fold(PRODUCTS).folded == len(in_held)
    _assert_each_event_once_and_in_order()


def test_fold_all_folds_the_lanes_of_a_table_at_once_each_on_its_own_connection(settings, other_connection):
    """fold_all() folds a table's 4 lanes on 4 threads: two lanes held mid-batch wait at the same time.

    Each of two lanes is held mid-batch: another session holds an uncommitted
    Change row with the key of the lane's first event, so the fold's INSERT
    waits on it. Folded one lane after another, only one fold could be waiting.
    """
    _lanes(settings, 4, FOLD_LINGER=0)
    fold.fold(PRODUCTS)  # the lanes' checkpoint rows exist
    _write(objects=40, updates=1)
    first_event = {}
    for event_id in ProductEvent.objects.order_by("pgh_id").values_list("pgh_id", flat=True):
        first_event.setdefault(_lane_of(event_id, 4), event_id)
    for lane in sorted(first_event)[:2]:
        other_connection.execute(
            "INSERT INTO audit_stream_change"
            " (event_table, event_id, model, label, created_at, diff, snapshot)"
            " VALUES (%s, %s, 'testapp.product', 'blocker', now(), '{}', '{}')",
            [PRODUCTS, first_event[lane]],
        )
    blocker = other_connection.execute("SELECT pg_backend_pid()").fetchone()[0]
    results = []

    def fold_everything():
        try:
            results.extend(fold.fold_all())
        except Exception as exc:  # pragma: no cover - reported below
            results.append(exc)
        finally:
            connections.close_all()

    thread = threading.Thread(target=fold_everything)
    thread.start()
    waiting = (
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND wait_event_type = 'Lock' AND pid <> %s"
    )
    try:
        wait_until(lambda: _query(waiting, [blocker]) == 2, timeout=30, message="two lanes held at once")
    finally:
        other_connection.rollback()
        thread.join(timeout=60)
    assert not [each for each in results if isinstance(each, Exception)], results
    products = next(each for each in results if each.event_table == PRODUCTS)
    assert (products.folded, products.caught_up, products.busy) == (80, True, False)
    _assert_each_event_once_and_in_order()


def test_the_dispatch_names_each_lane_with_work(settings):
    """The listener and the sweep send one fold task per lane with work (tables of one lane: the table)."""
    _lanes(settings, 4)
    assert (PRODUCTS, 0) not in wakeup.lanes_with_work()
    _write(objects=40, updates=0)
    assert {lane for table, lane in wakeup.lanes_with_work() if table == PRODUCTS} == {0, 1, 2, 3}
    assert ("testapp_pricechange", None) not in wakeup.lanes_with_work()  # one lane, nothing to fold
    fold.fold(PRODUCTS, lane=1)
    assert {lane for table, lane in wakeup.lanes_with_work() if table == PRODUCTS} == {0, 2, 3}
    assert wakeup.has_work(PRODUCTS, lane=0) and not wakeup.has_work(PRODUCTS, lane=1)
    fold.fold(PRODUCTS)
    assert PRODUCTS not in wakeup.tables_with_work()


def test_the_listener_sends_a_fold_task_per_lane_and_two_worker_processes_fold_them(settings, tmp_path):
    """End to end: the real listener and a worker with two processes fold a table of 4 lanes, lane by lane."""
    redis.Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/15")).flushdb()
    stream_settings = {"FOLD_LANES": {LABEL: 4}, "POLL_INTERVAL": 0.5}
    _lanes(settings, 4)
    procs = [start_worker(tmp_path, settings=stream_settings, concurrency=2)]
    try:
        procs.append(start_listener(tmp_path, settings=stream_settings))
        _write(objects=40, updates=2)
        events = ProductEvent.objects.count()
        wait_until(lambda: Change.objects.filter(event_table=PRODUCTS).count() >= events, timeout=60)
        # Each finished fold task logs its result: tasks of this table named each of its 4 lanes.
        wait_until(
            lambda: (
                {int(lane) for lane in re.findall(rf"'{PRODUCTS}', 'lane': (\d)", procs[0].output())}
                == {0, 1, 2, 3}
            ),
            timeout=30,
            message="a fold task of each lane",
        )
    finally:
        for proc in procs:
            proc.stop()
    _assert_each_event_once_and_in_order()


def test_retention_keeps_the_unfolded_events_of_a_lane_that_lags(settings):
    """Pruning by max_age deletes an event only when its own lane has folded it."""
    _lanes(settings, 2)
    _write(objects=20, updates=0, prefix="old")
    fold.fold(PRODUCTS)
    _write(objects=20, updates=0, prefix="late")
    fold.fold(PRODUCTS, lane=0)  # lane 1 lags: its "late" events are unfolded
    with connection.cursor() as cursor:
        cursor.execute("BEGIN")
        cursor.execute("SET LOCAL session_replication_role = replica")
        cursor.execute(f"UPDATE {PRODUCTS} SET pgh_created_at = pgh_created_at - %s", [timedelta(days=100)])
        cursor.execute("COMMIT")
    settings.AUDIT_STREAM = {**settings.AUDIT_STREAM, "RETENTION": {LABEL: {"max_age": "90d"}}}
    retention.prune(targets=[LABEL])
    unfolded_late = [
        event_id
        for event_id in ProductEvent.objects.filter(name__startswith="late").values_list("pgh_id", flat=True)
        if _lane_of(event_id, 2) == 1
    ]
    assert unfolded_late
    assert set(unfolded_late) <= set(ProductEvent.objects.values_list("pgh_id", flat=True))
    assert not ProductEvent.objects.filter(name__startswith="old").exists()
    assert fold.fold(PRODUCTS, lane=1).folded == len(unfolded_late)


def test_a_lanes_batch_walks_the_backlog_by_id_and_never_scans_the_table(settings):
    """With 4 lanes and 20,000 unfolded events, a batch of 100 reads a few hundred rows, not 20,000.

    (Written as "= lane", the lane test was estimated at 0.5% of the rows: the
    LIMIT looked far away and the planner scanned and sorted the whole table
    for every batch, 5x the CPU per event in benchmarks/stream.py --lanes.)
    With fresh statistics, as the one-lane fold needs them today: without any,
    a batch of one lane too reads the interval through the pgh_xid index
    (issue 19's planner part, which makes the fast plan the only one).
    """
    _lanes(settings, 4, FOLD_LINGER=0)
    Product.objects.bulk_create([Product(name=f"p{i}") for i in range(20_000)])
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {PRODUCTS}")
    fold.fold(PRODUCTS, lane=1, batch_size=100, max_seconds=0)  # opens the interval: its first batch
    # The next batch of the interval, counted in one transaction (counters flush at its end).
    with transaction.atomic():
        before = _counters()
        folded = fold.fold(PRODUCTS, lane=1, batch_size=100, max_seconds=0).folded
        assert 50 <= folded <= 100  # a window of 4 x 100 ids holds about 100 of the lane's events
        after = _counters()
    scanned, fetched = after[0] - before[0], after[1] - before[1]
    assert scanned == 0
    assert fetched < 1000  # about 4 x 100 ids walked (the other lanes' events are read past)


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"nope.Model": 2}, "['nope.Model']: unknown key"),
        ({LABEL: 0}, "from 1 to 64, not 0"),
        ({LABEL: "4"}, "from 1 to 64, not '4'"),
        ({"default": 65}, "from 1 to 64, not 65"),
        ({"audit_stream.RowLog": 2}, "always folds in one lane"),
    ],
)
def test_bad_fold_lanes_are_reported_by_the_system_check(settings, setting, message):
    settings.AUDIT_STREAM = {"FOLD_LANES": setting}
    (error,) = check_fold_lanes()
    assert error.id == "audit_stream.E012" and message in error.msg


def test_good_fold_lanes_pass_the_system_check(settings):
    settings.AUDIT_STREAM = {"FOLD_LANES": {LABEL: 4, "testapp.orderevent": 2, "default": 1}}
    assert check_fold_lanes() == []
    assert lanes.configured("testapp_orderevent") == 2 and lanes.configured("audit_stream_row_log") == 1


def _counters() -> tuple[int, int]:
    """The event table's rows read by sequential scans and fetched through indexes, this transaction."""
    return _query(
        "SELECT ARRAY[coalesce(seq_tup_read, 0), coalesce(idx_tup_fetch, 0)]"
        " FROM pg_stat_xact_user_tables WHERE relname = %s",
        [PRODUCTS],
    )


def _query(sql, params):
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchone()[0]
