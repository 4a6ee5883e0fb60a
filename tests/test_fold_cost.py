"""The fold costs the same per event whatever the size of its backlog and of the history below it.

The same burst (new products, and updates of products folded long ago, whose
diffs look up their object's last change) is folded over a short and over a long
folded history. What the fold reads is taken from PostgreSQL's own
per-transaction counters (pg_stat_xact_user_tables) of the event table and of
the change feed: rows read by sequential scans and rows fetched through
indexes. Nothing is vacuumed or analysed (autovacuum is off on this cluster):
the planner sees the tables as a worker does after a burst into a young table.
"""

import contextlib

import pytest
from django.db import connection, transaction

from audit_stream import partitions
from audit_stream.models import Change
from audit_stream.stream import fold

pytestmark = pytest.mark.django_db(transaction=True)

PRODUCTS = "testapp_productevent"
CHANGE = "audit_stream_change"
SHORT, LONG = 1_000, 20_000
BURST = 500  # new products, and as many updates of the oldest products


def _write_products(count: int) -> None:
    """One set-based INSERT of ``count`` products: its statement trigger writes ``count`` events."""
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO testapp_product (name, price, stock, updated_at)"
            " SELECT 'product ' || gen_random_uuid(), 1, 0, now() FROM generate_series(1, %s)",
            [count],
        )


def _burst() -> int:
    """BURST new products, then an update of each of the BURST oldest ones; returns the events written."""
    _write_products(BURST)
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE testapp_product SET stock = stock + 1"
            " WHERE id IN (SELECT id FROM testapp_product ORDER BY id LIMIT %s)",
            [BURST],
        )
    return 2 * BURST


def _counters(table: str) -> tuple[int, int]:
    """(rows read by sequential scans, rows fetched by index scans) of ``table`` and its partitions."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT coalesce(sum(seq_tup_read), 0), coalesce(sum(idx_tup_fetch), 0)"
            " FROM pg_stat_xact_user_tables WHERE relid = %s::regclass"
            " OR relid IN (SELECT inhrelid FROM pg_inherits WHERE inhparent = %s::regclass)",
            [table, table],
        )
        return cursor.fetchone()


@contextlib.contextmanager
def _rows_read():
    """Counts the rows of the event table and the change feed read meanwhile.

    Yields a dict that ends up as {table: (seq_read, fetched)}. The backend's
    pending counters are read before and after in one transaction: they are
    not flushed inside one.
    """
    counted = {}
    with transaction.atomic():
        before = {table: _counters(table) for table in (PRODUCTS, CHANGE)}
        yield counted
        after = {table: _counters(table) for table in (PRODUCTS, CHANGE)}
    for table in before:
        counted[table] = tuple(a - b for a, b in zip(after[table], before[table], strict=True))


def _fold_burst() -> dict:
    """Fold one burst in batches of 100; the rows read per event folded, by table."""
    written = _burst()
    with _rows_read() as read:
        assert fold.fold(PRODUCTS, batch_size=100).folded == written
    return {table: (int(seq) / written, int(fetched) / written) for table, (seq, fetched) in read.items()}


def _partition_slack_per_event() -> float:
    """On the partitioned layout (AUDIT_STREAM_TEST_PARTITIONED=1) the planner may read a small partition
    whole rather than probe its index (README, "Partitioned history"): at most the table's rows once,
    spread over the burst's events. On the plain layout every bound below is exact."""
    with connection.cursor() as cursor:
        if not partitions.is_partitioned(cursor, PRODUCTS):
            return 0.0
        cursor.execute(f"SELECT count(*) FROM {PRODUCTS}")
        return cursor.fetchone()[0] / (2 * BURST)


def test_a_burst_reads_as_many_rows_per_event_on_a_long_history_as_on_a_short_one(settings):
    """The same burst of 1,000 events reads the same rows per event over 1,000 and over 21,000 folded
    changes: each event once through the primary key, each update's object's last change once through the
    (event_table, object_id, event_id) index, nothing by a sequential scan; the interval's first id is
    found once per fold."""
    settings.AUDIT_STREAM = {**getattr(settings, "AUDIT_STREAM", {}), "FOLD_LINGER": 0}
    _write_products(SHORT)
    assert fold.fold(PRODUCTS).folded == SHORT
    short = _fold_burst()
    slack = _partition_slack_per_event()

    _write_products(LONG)
    assert fold.fold(PRODUCTS).folded == LONG
    long = _fold_burst()
    slack = max(slack, _partition_slack_per_event())

    for table in (PRODUCTS, CHANGE):
        (short_seq, short_fetched), (long_seq, long_fetched) = short[table], long[table]
        # Over the long history nothing is read by a sequential scan. Over the short one the planner
        # may read the small table whole once (2,000 rows: cheaper than its index by its estimate,
        # seen after other modules left statistics behind): at most the table once, spread over the burst.
        assert long_seq <= slack, (table, short, long)
        assert short_seq <= slack + (SHORT + 2 * BURST) / (2 * BURST), (table, short, long)
        assert long_fetched <= short_fetched + 0.1, (table, short, long)
    # Per event: the event row read by its batch and once more for the interval's first id (plus the
    # idle check's probes), the object's last change once for an update (half the burst).
    assert long[PRODUCTS][1] <= 2.2 + slack and long[CHANGE][1] <= 0.6 + slack, (short, long)
    assert Change.objects.filter(event_table=PRODUCTS).count() == SHORT + LONG + 4 * BURST


def _write_backlog(count: int) -> None:
    """``count`` product events as ``benchmarks.scale`` writes a history: a few big set-based
    transactions (a quarter of the products each), then 1% of the products deleted in one."""
    for _ in range(4):
        _write_products(count // 4)
    with connection.cursor() as cursor:
        cursor.execute(
            "DELETE FROM testapp_product WHERE id IN (SELECT id FROM testapp_product ORDER BY id LIMIT %s)",
            [count // 100],
        )


def _fold_backlog(count: int) -> dict:
    """Write a backlog of about ``count`` events and fold it in batches of 250 (the fold's own first
    fold of the table is not counted); the rows read per event folded, by table."""
    fold.fold(PRODUCTS)  # the table's checkpoint exists
    _write_backlog(count)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT count(*) FROM {PRODUCTS}")
        written = cursor.fetchone()[0] - Change.objects.filter(event_table=PRODUCTS).count()
        # Earlier tests' statistics outlive the table's truncation between tests.
        cursor.execute("DELETE FROM pg_statistic WHERE starelid = %s::regclass", [PRODUCTS])
    with _rows_read() as read:
        assert fold.fold(PRODUCTS, batch_size=250).folded == written
    return {table: (int(seq) / written, int(fetched) / written) for table, (seq, fetched) in read.items()}


@pytest.mark.parametrize("size", [2_000, 20_000])
def test_a_backlog_is_folded_reading_each_event_about_twice_whatever_its_size(settings, size):
    """A backlog written in a few big transactions, never analysed, is folded reading about 2 rows per
    event at 2,000 events as at 20,000: each batch walks its own window of the primary key, and the
    interval's first id is found once. (Planned on the interval's pgh_xid range instead, each batch read
    the rest of the backlog: 4.5 rows per event at 30,000 events, 31 at 300,000, benchmarks.fold_scale.)"""
    settings.AUDIT_STREAM = {**getattr(settings, "AUDIT_STREAM", {}), "FOLD_LINGER": 0}
    read = _fold_backlog(size)
    slack = _partition_slack_per_event() * 2 * BURST / size
    assert read[PRODUCTS][0] <= slack and read[CHANGE][0] <= slack, read
    assert read[PRODUCTS][1] <= 2.1 + slack, read
    # Only the deleted products' last changes; on the partitioned layout the previous-change lookup of
    # every event probes each partition of the feed (1.25 rows fetched per event at 20,000, not growing
    # with the feed as a walk of it would).
    assert read[CHANGE][1] <= (0.1 if slack == 0 else 2.0), read
