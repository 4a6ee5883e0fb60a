"""The fold under concurrent transactions: nothing skipped, nothing twice, order kept.

Every test runs twice: the table folded in one lane, and in 4 lanes
(``FOLD_LANES``, audit_stream.stream.lanes), where each object's events are
folded by their lane's own checkpoint and worker.
"""

import threading
import time

import psycopg
import pytest
from django.db import connection, connections

from audit_stream.models import Change
from audit_stream.stream import fold, lanes
from tests.procs import wait_until
from tests.testapp.models import Product, ProductEvent

pytestmark = pytest.mark.django_db(transaction=True)

PRODUCTS = "testapp_productevent"


@pytest.fixture(autouse=True, params=[1, 4], ids=["1-lane", "4-lanes"])
def lane_count(request, settings):
    """The number of lanes the products' event table is folded in."""
    settings.AUDIT_STREAM = {"FOLD_LANES": {"testapp.ProductEvent": request.param}}
    return request.param


@pytest.fixture
def other_connection():
    """A second, independent session (its own transactions)."""
    conn = psycopg.connect(**connection.get_connection_params())
    yield conn
    conn.close()


def _insert(conn, name, price=1):
    conn.execute(
        "INSERT INTO testapp_product (name, price, stock, updated_at) VALUES (%s, %s, 0, now())",
        [name, price],
    )


def test_a_late_committing_transaction_loses_nothing(other_connection):
    """Its events have lower ids than events folded before it commits."""
    _insert(other_connection, "early")  # takes a low pgh_id, stays uncommitted
    Product.objects.create(name="later")  # higher pgh_id, committed first
    assert fold.fold(PRODUCTS).folded == 1

    other_connection.commit()
    assert fold.fold(PRODUCTS).folded == 1
    assert sorted(Change.objects.values_list("snapshot__name", flat=True)) == ["early", "later"]
    early = ProductEvent.objects.get(name="early").pgh_id
    assert early < ProductEvent.objects.get(name="later").pgh_id


def test_a_rolled_back_transaction_leaves_no_change(other_connection):
    _insert(other_connection, "ghost")
    other_connection.rollback()
    Product.objects.create(name="real")
    fold.fold(PRODUCTS)
    assert list(Change.objects.values_list("snapshot__name", flat=True)) == ["real"]


def test_per_object_order_is_kept_when_an_older_transaction_is_still_open(other_connection):
    """An open transaction with a lower xid must not let a later change of an object jump ahead."""
    product = Product.objects.create(name="x", price=1)
    fold.fold(PRODUCTS)
    # An unrelated transaction takes an xid and stays open (holds back xmin).
    other_connection.execute("SELECT pg_current_xact_id()")
    Product.objects.filter(pk=product.pk).update(price=2)
    fold.fold(PRODUCTS)
    Product.objects.filter(pk=product.pk).update(price=3)
    other_connection.commit()
    fold.fold(PRODUCTS)
    diffs = [c.diff.get("price") for c in Change.objects.for_object(product).filter(event_table=PRODUCTS)]
    assert diffs == [[None, 1], [1, 2], [2, 3]]


def test_savepoint_rollback_drops_only_its_events(other_connection):
    with other_connection.transaction():
        _insert(other_connection, "kept")
        try:
            with other_connection.transaction():  # a savepoint
                _insert(other_connection, "dropped")
                raise RuntimeError
        except RuntimeError:
            pass
    fold.fold(PRODUCTS)
    assert list(Change.objects.values_list("snapshot__name", flat=True)) == ["kept"]


def test_concurrent_folds_of_one_table_fold_each_event_once(lane_count):
    """Four workers: all on the one lane, or one on each of the 4 lanes."""
    Product.objects.bulk_create([Product(name=f"p{i}") for i in range(3000)])
    results, errors = [], []

    def worker(lane):
        try:
            results.append(fold.fold(PRODUCTS, lane=lane, batch_size=200))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=worker, args=(i % lane_count,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    fold.fold(PRODUCTS)  # whatever a backed-off fold left
    assert Change.objects.filter(event_table=PRODUCTS).count() == 3000
    assert Change.objects.values("event_id").distinct().count() == 3000


def test_a_fold_lingers_through_steady_writes_without_being_woken(settings):
    """Writes arriving while the fold lingers are folded by the same call: no NOTIFY needed.

    With 4 lanes the writes land in any lane: the one call lingers on all of them.
    """
    settings.AUDIT_STREAM = {**settings.AUDIT_STREAM, "FOLD_LINGER": 0.3}
    Product.objects.create(name="first")

    def writer():
        for i in range(8):
            time.sleep(0.05)
            Product.objects.create(name=f"steady{i}")
        connections.close_all()

    thread = threading.Thread(target=writer)
    thread.start()
    result = fold.fold(PRODUCTS)
    thread.join()
    assert result.folded == 9  # one call folded the first row and all eight later ones


def test_a_fold_yields_after_max_seconds_even_under_steady_writes(settings):
    """A fold that keeps finding work still ends at its deadline, so the task can yield."""
    settings.AUDIT_STREAM = {**settings.AUDIT_STREAM, "FOLD_LINGER": 0.3}
    stop = threading.Event()

    def writer():
        i = 0
        while not stop.is_set():
            Product.objects.create(name=f"steady{i}")
            i += 1
            time.sleep(0.02)
        connections.close_all()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        started = time.monotonic()
        result = fold.fold(PRODUCTS, max_seconds=0.5)
        elapsed = time.monotonic() - started
        written = ProductEvent.objects.count()
        # The writer goes on after the fold returned: the fold did not wait for it to stop.
        wait_until(lambda: ProductEvent.objects.count() >= written + 5, timeout=10, message="more writes")
    finally:
        stop.set()
        thread.join()
    assert elapsed < 1.5  # without the deadline check it ran as long as the writer did
    assert result.folded > 0


def test_a_fold_that_finds_another_fold_mid_batch_backs_off(other_connection, lane_count):
    """Two folds of one table (of one lane) overlap: the second sees the checkpoint locked and folds nothing.

    The first fold is held mid-batch, after locking its checkpoint: another
    session holds an uncommitted Change row with the key of the first event,
    so the fold's INSERT waits on it. While it waits the second fold runs.
    """
    fold.fold(PRODUCTS)  # the table's checkpoint row exists, as it does after its first fold
    Product.objects.bulk_create([Product(name=f"p{i}") for i in range(50)])
    first_event = ProductEvent.objects.order_by("pgh_id").values_list("pgh_id", flat=True).first()
    lane = _lane_of(first_event, lane_count)
    events = ProductEvent.objects.values_list("pgh_id", flat=True)
    in_lane = [event for event in events if _lane_of(event, lane_count) == lane]
    other_connection.execute(
        "INSERT INTO audit_stream_change (event_table, event_id, model, label, created_at, diff, snapshot)"
        " VALUES (%s, %s, 'testapp.product', 'blocker', now(), '{}', '{}')",
        [PRODUCTS, first_event],
    )
    held = {}

    def first_fold():
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            held["pid"] = cursor.fetchone()[0]
        try:
            held["result"] = fold.fold(PRODUCTS, lane=lane)
        except Exception as exc:  # pragma: no cover - reported below
            held["error"] = exc
        finally:
            connections.close_all()

    thread = threading.Thread(target=first_fold)
    thread.start()
    waiting = "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = %s AND wait_event_type = 'Lock')"
    try:
        wait_until(
            lambda: "pid" in held and _query(waiting, [held["pid"]]), timeout=30, message="a held fold"
        )
        second = {}

        def second_fold():
            try:
                second["result"] = fold.fold(PRODUCTS, lane=lane, max_seconds=5)
            finally:
                connections.close_all()

        other = threading.Thread(target=second_fold)
        other.start()
        other.join(timeout=15)
        assert not other.is_alive(), "the second fold waited for the first instead of backing off"
        assert (second["result"].busy, second["result"].folded) == (True, 0)
    finally:
        other_connection.rollback()  # let the first fold go on
        thread.join(timeout=60)
    assert "error" not in held, held.get("error")
    assert held["result"].folded == len(in_lane)  # all 50 with one lane
    fold.fold(PRODUCTS)  # the other lanes' events
    assert Change.objects.filter(event_table=PRODUCTS).count() == 50
    assert Change.objects.filter(event_table=PRODUCTS).values("event_id").distinct().count() == 50


def _lane_of(event_id: int, count: int) -> int:
    """The lane of an event's object, by the fold's own definition (lanes.LANE_OF)."""
    sql = lanes.LANE_OF.replace("{object_id}", "e.pgh_obj_id::text")
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT {sql} FROM {PRODUCTS} AS e WHERE e.pgh_id = %(id)s", {"id": event_id, "lanes": count}
        )
        return cursor.fetchone()[0]


def _query(sql, params):
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchone()[0]
