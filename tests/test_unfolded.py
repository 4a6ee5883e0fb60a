"""The fold and its idle check cost the same whatever the table's size and whatever vacuum did.

The cluster runs with autovacuum off, and nothing here vacuums or analyses: the
event table grows with no statistics and no visibility map, as in production
between two autovacuum runs. What a probe costs is read from PostgreSQL's own
per-transaction counters (pg_stat_xact_user_tables): rows read by sequential
scans, and rows fetched through indexes.
"""

import contextlib

import psycopg
import pytest
from django.db import connection, transaction

from audit_stream import partitions
from audit_stream.models import Change
from audit_stream.stream import fold, wakeup

pytestmark = pytest.mark.django_db(transaction=True)

NOTES = "testapp_noteevent"
HISTORY = 20_000


def _write_notes(count: int) -> None:
    """One set-based INSERT of ``count`` notes: its statement trigger writes ``count`` events."""
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO testapp_note (title, note) SELECT 'note ' || g, '' FROM generate_series(1, %s) AS g",
            [count],
        )


def _counters() -> tuple[int, int]:
    """The table's counters (its partitions' on the partitioned layout, AUDIT_STREAM_TEST_PARTITIONED)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT coalesce(sum(seq_tup_read), 0), coalesce(sum(idx_tup_fetch), 0)"
            " FROM pg_stat_xact_user_tables WHERE relid = %s::regclass"
            " OR relid IN (SELECT inhrelid FROM pg_inherits WHERE inhparent = %s::regclass)",
            [NOTES, NOTES],
        )
        return cursor.fetchone()


@contextlib.contextmanager
def _rows_read():
    """Counts the event table's rows read by sequential scans and fetched by index scans.

    Yields a list that ends up as [seq_read, fetched]. The backend's pending
    counters (which may still hold earlier transactions' counts) are read
    before and after, in one transaction: they are not flushed inside one.
    """
    counted = []
    with transaction.atomic():
        before = _counters()
        yield counted
        after = _counters()
    counted.extend([after[0] - before[0], after[1] - before[1]])


@pytest.fixture
def folded_history(settings):
    """HISTORY events, all folded, in a table that was never vacuumed nor analysed."""
    settings.AUDIT_STREAM = {**getattr(settings, "AUDIT_STREAM", {}), "FOLD_LINGER": 0}
    _write_notes(HISTORY)
    fold.fold(NOTES)
    assert Change.objects.filter(event_table=NOTES).count() == HISTORY
    with connection.cursor() as cursor:
        # An earlier test's ANALYZE outlives the table's truncation between tests.
        cursor.execute("DELETE FROM pg_statistic WHERE starelid = %s::regclass", [NOTES])
        cursor.execute(
            "SELECT last_vacuum, last_autovacuum, (SELECT count(*) FROM pg_stats WHERE tablename = %s)"
            " FROM pg_stat_user_tables WHERE relname = %s",
            [NOTES, NOTES],
        )
        assert cursor.fetchone() == (None, None, 0)


@pytest.fixture(params=["no statistics", "analysed"])
def statistics(request, folded_history):
    """The planner's view of the table: none (never analysed), or fresh statistics."""
    if request.param == "analysed":
        with connection.cursor() as cursor:
            cursor.execute(f"ANALYZE {NOTES}")


def test_idle_check_reads_no_folded_row(statistics):
    """With everything folded, "is there work?" fetches no row of the 20,000 and scans none."""
    slack = _partition_slack()
    with _rows_read() as read:
        assert not wakeup.has_work(NOTES)
    seq_read, fetched = read
    assert seq_read <= slack and fetched == 0


def test_idle_check_finds_a_new_event_by_reading_it_alone(statistics):
    """One new committed event is found by fetching that one row."""
    _write_notes(1)
    slack = _partition_slack()
    with _rows_read() as read:
        assert wakeup.has_work(NOTES)
    seq_read, fetched = read
    assert seq_read <= slack and fetched <= 1
    assert seq_read + fetched >= 1


def test_idle_check_finds_a_transaction_that_was_in_progress_at_the_checkpoint(folded_history):
    """An event of a transaction still open when the fold took its checkpoint is work once it commits."""
    late = psycopg.connect(**connection.get_connection_params())
    try:
        late.execute("INSERT INTO testapp_note (title, note) VALUES ('late', '')")  # opens a transaction
        _write_notes(1)
        assert fold.fold(NOTES).folded == 1  # the checkpoint now has `late` in progress
        assert not wakeup.has_work(NOTES)
        late.commit()
        with _rows_read() as read:
            assert wakeup.has_work(NOTES)
        assert read == [0, 1]
    finally:
        late.close()
    assert fold.fold(NOTES).folded == 1


def test_a_batch_after_a_long_history_reads_only_its_own_events(statistics):
    """Folding 3 new events reads those 3 (and no row of the folded history)."""
    _write_notes(3)
    slack = _partition_slack()
    with _rows_read() as read:
        assert fold.fold(NOTES).folded == 3
    seq_read, fetched = read
    assert seq_read <= slack
    assert fetched <= 3 * 3 + slack  # the interval's first id, the batch, the idle check after it
    assert Change.objects.filter(event_table=NOTES).count() == HISTORY + 3


def test_a_burst_is_folded_reading_each_of_its_events_about_once(statistics):
    """20,000 new events, folded in batches of 1,000, read about twice in all (the interval's first id,
    then each batch its own window of the primary key), with no statistics as with stale ones: the
    planner's guess of the interval's size never makes each batch read the whole backlog again."""
    _write_notes(HISTORY)
    slack = _partition_slack()
    with _rows_read() as read:
        assert fold.fold(NOTES, batch_size=1_000).folded == HISTORY
    seq_read, fetched = read
    assert seq_read <= slack
    assert seq_read + fetched <= 2.1 * HISTORY + slack
    assert Change.objects.filter(event_table=NOTES).count() == 2 * HISTORY


def test_a_tables_first_fold_after_a_burst_reads_no_row_sequentially(settings):
    """The first fold of a table (which creates its checkpoint, asking whether its events are ahead of
    this cluster's transactions) after 20,000 events, with no statistics, scans nothing sequentially."""
    settings.AUDIT_STREAM = {**getattr(settings, "AUDIT_STREAM", {}), "FOLD_LINGER": 0}
    _write_notes(HISTORY)
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM pg_statistic WHERE starelid = %s::regclass", [NOTES])
    slack = _partition_slack()
    with _rows_read() as read:
        assert fold.fold(NOTES).folded == HISTORY
    seq_read, fetched = read
    assert seq_read <= slack
    assert seq_read + fetched <= 2.1 * HISTORY + slack  # the interval's first id, then each batch its window


def _partition_slack() -> int:
    """What the partitioned layout (AUDIT_STREAM_TEST_PARTITIONED=1) may read on top, else 0.

    The planner may read a small partition whole rather than probe its index
    (README, "Partitioned history"; the newest partitions hold a few rows):
    at most once each, so at most the table's rows (counted here, before the
    measured probe), never once per batch. On the plain layout every bound
    below is exact.
    """
    with connection.cursor() as cursor:
        if not partitions.is_partitioned(cursor, NOTES):
            return 0
        cursor.execute(f"SELECT count(*) FROM {NOTES}")
        return cursor.fetchone()[0]


def test_an_interval_with_a_late_transaction_skips_the_folded_events_between_its_ids(statistics):
    """A transaction open while 2,000 events were written and folded commits: its event, far below the
    5 new ones, and those 5 are folded in batches of 10 ids without walking the 2,000 ids between."""
    late = psycopg.connect(**connection.get_connection_params())
    try:
        late.execute("INSERT INTO testapp_note (title, note) VALUES ('late', '')")  # the lowest id
        _write_notes(2_000)
        assert fold.fold(NOTES).folded == 2_000
        late.commit()
    finally:
        late.close()
    _write_notes(5)
    slack = _partition_slack()
    with _rows_read() as read:
        assert fold.fold(NOTES, batch_size=10).folded == 6
    seq_read, fetched = read
    assert seq_read <= slack
    assert seq_read + fetched <= 100 + slack
    assert Change.objects.filter(event_table=NOTES).count() == HISTORY + 2_006
