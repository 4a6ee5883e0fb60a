"""Per-partition counts: retention drops a partition without reading it, and its counts stay exact.

The fold counts each partition's events (per context and in all) as it folds
them; retention's batches and erasure take off what they delete; a drop takes
the rest off the contexts' counts. Uses the partitioned Ticket events of
tests/test_partitions.py (10 ids a partition).
"""

import re
from datetime import timedelta

import pytest
from django.db import connection
from django.db.models import Sum
from django.test.utils import CaptureQueriesContext

import audit_stream
from audit_stream import partitions, retention
from audit_stream.models import Context, ContextCount, PartitionCount
from audit_stream.partitions import counts
from audit_stream.retention import drops
from audit_stream.stream import fold
from tests.test_partitions import TICKETS, _age_events, _parts, _write, partitioned  # noqa: F401
from tests.testapp.models import Ticket, TicketEvent

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("counted_from_empty")]

AGED = retention.Policy(max_age=timedelta(days=90))


@pytest.fixture
def counted_from_empty(partitioned):  # noqa: F811
    """The partitioned Ticket events, empty (each test starts from a flushed database), counted from nothing.

    The conversion marks the table's first partition as not counted, rightly for the rows it held then:
    none are left, so each test starts from counts that cover every partition.
    """
    PartitionCount.objects.all().delete()


def _held() -> dict[tuple[str, str | None], int]:
    """What the partitions hold, read from them: events per (partition, context), and per partition (None)."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT c.relname, e.pgh_context_id::text, count(*) FROM {TICKETS} AS e"
            " JOIN pg_class AS c ON c.oid = e.tableoid"
            " GROUP BY GROUPING SETS ((c.relname, e.pgh_context_id), (c.relname))"
            " HAVING grouping(e.pgh_context_id) = 1 OR e.pgh_context_id IS NOT NULL"
        )
        return {(part, context): events for part, context, events in cursor.fetchall()}


def _counted() -> dict[tuple[str, str | None], int]:
    """The same, from the partitions' counts (every slot summed; the nil context is the total)."""
    rows = PartitionCount.objects.filter(slot__gte=counts.DELETED).values("partition", "context_id")
    return {
        (row["partition"], None if str(row["context_id"]) == counts.ALL else str(row["context_id"])): total
        for row in rows.annotate(total=Sum("events"))
        if (total := row["total"])
    }


def _folded_and_aged() -> str:
    """25 ticket events in a context, folded and aged past 90 days; the lowest full partition's name."""
    with audit_stream.context(user="tickets"):
        _write(25)
    fold.fold(TICKETS)
    _age_events()
    return next(p.name for p in _parts() if p.full_before is not None)


def _tickets_context() -> str:
    return str(Context.objects.get(metadata__user="tickets").id)


def test_the_fold_counts_each_partitions_events_per_context_and_in_all():
    """After a fold, the counts say what each partition holds, read from the partitions themselves."""
    with audit_stream.context(user="tickets"):
        _write(12)
    _write(9)
    with audit_stream.context(user="others"):
        _write(4)
    fold.fold(TICKETS)
    assert _counted() == _held()
    assert len({part for part, _ in _held()}) >= 3  # the events span partitions


def test_events_not_folded_yet_are_not_counted():
    """The counts are the fold's: an event written and not folded is in no count."""
    _write(5)
    assert _counted() == {}


def test_a_drop_reads_none_of_the_partitions_it_drops():
    """The drop's statements name a dropped partition only to detach, mark and drop it; counts stay exact."""
    with audit_stream.context(user="tickets"):
        _write(25)
    fold.fold(TICKETS)
    _age_events()
    dropped = [p.name for p in _parts() if p.full_before is not None]
    with CaptureQueriesContext(connection) as queries:
        report = retention.prune(targets=["testapp.TicketEvent"], overrides=AGED)
    assert report.rows[TICKETS] == 25
    for name in dropped:  # nothing but droppable's two probes of its pgh_xid index, a row each at most
        reads = [q["sql"] for q in queries if re.search(rf'(FROM|JOIN) "?{name}"?\b', q["sql"])]
        assert [sql for sql in reads if "ORDER BY e.pgh_xid LIMIT 1" not in sql] == [], name
    assert ContextCount.objects.get(context_id=_tickets_context()).events == 0
    assert not PartitionCount.objects.filter(partition__in=dropped).exists()


def test_a_partition_its_counts_do_not_cover_is_read_when_dropped():
    """A partition marked as not counted (older than the counts, converted) is read: the same outcome."""
    first = _folded_and_aged()
    with connection.cursor() as cursor:
        counts.mark_unknown(cursor, first)  # its counts forgotten, as before migration 0039
    report = retention.prune(targets=["testapp.TicketEvent"], overrides=AGED)
    assert report.rows[TICKETS] == 25
    assert ContextCount.objects.get(context_id=_tickets_context()).events == 0
    assert not PartitionCount.objects.filter(partition=first).exists()


def _straddle_then_drop() -> None:
    """A prune deletes the aged events of the partition still filling in batches; later writes fill it,
    and a second prune drops it whole (its counts less what the batches took)."""
    _age_events()
    retention.prune(targets=["testapp.TicketEvent"], overrides=AGED)
    assert PartitionCount.objects.filter(slot=counts.DELETED).exists()  # the batches' deletes
    _write(12)  # fills the straddling partition: the sequence passes it
    fold.fold(TICKETS)
    _age_events()
    retention.prune(targets=["testapp.TicketEvent"], overrides=AGED)


def test_events_deleted_in_batches_are_taken_off_once_when_their_partition_is_dropped():
    """The straddling partition's batches take their events off both counts; its drop takes the rest only."""
    with audit_stream.context(user="tickets"):
        _write(15)
    fold.fold(TICKETS)
    _straddle_then_drop()
    assert TicketEvent.objects.filter(pgh_context__isnull=False).count() == 0
    assert ContextCount.objects.get(context_id=_tickets_context()).events == 0
    assert _counted() == _held()


def test_erased_events_are_taken_off_once_when_their_partition_is_dropped():
    """Erasure takes an object's events off its partition's counts: the drop does not take them again."""
    with audit_stream.context(user="tickets"):
        tickets = _write(8)
        _write(4)  # past the first partition: the same context in a later one, kept
        Ticket.objects.filter(pk=tickets[0].pk).update(state="closed")
    fold.fold(TICKETS)
    retention.erase("testapp.Ticket", str(tickets[0].pk))
    assert _counted() == _held()
    _age_events()
    first = next(p for p in _parts() if p.full_before is not None)
    drops.drop_partitions(connection, TICKETS, [first], False, None, contexts=True)  # it alone goes
    kept = TicketEvent.objects.filter(pgh_context_id=_tickets_context()).count()
    assert kept > 0
    assert ContextCount.objects.get(context_id=_tickets_context()).events == kept


def test_a_partition_made_from_the_default_partitions_rows_is_marked_not_counted():
    """Rows that landed in the default partition were counted there: the partition they move to is read."""
    ranged = [p for p in _parts() if not p.default]
    with connection.cursor() as cursor:  # the next ids fall past every range
        cursor.execute(
            "SELECT setval(pg_get_serial_sequence(%s, 'pgh_id'), %s)", [TICKETS, ranged[-1].upper + 5]
        )
    with audit_stream.context(user="tickets"):
        _write(2)
    fold.fold(TICKETS)
    assert {part for part, _ in _counted()} == {f"{TICKETS}_default"}
    created = partitions.ensure(partitions.Layout(TICKETS, size=10, ahead=2))
    moved = [name for name in created if name == f"{TICKETS}_p{ranged[-1].upper}"]
    assert moved and PartitionCount.objects.filter(partition=moved[0], slot=counts.UNKNOWN).exists()


def test_a_new_partition_starts_without_the_counts_of_a_former_table_of_its_name():
    """Counts left under a name (a table dropped outside retention) are not a new partition's."""
    ranged = [p for p in _parts() if not p.default]
    upcoming = f"{TICKETS}_p{ranged[-1].upper}"
    PartitionCount.objects.create(partition=upcoming, filenode=1, slot=0, context_id=counts.ALL, events=7)
    with connection.cursor() as cursor:  # the sequence reaches the last range: one more is made ahead
        cursor.execute("SELECT setval(pg_get_serial_sequence(%s, 'pgh_id'), %s)", [TICKETS, ranged[-1].lower])
    assert upcoming in partitions.ensure(partitions.Layout(TICKETS, size=10, ahead=2))
    assert not PartitionCount.objects.filter(partition=upcoming).exists()


def test_a_partition_truncated_since_it_was_counted_is_read_when_dropped():
    """A partition emptied outside retention (a new file) is read: its old counts are not subtracted."""
    first = _folded_and_aged()
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT count(*) FROM {first}")
        truncated = cursor.fetchone()[0]
        cursor.execute(f"TRUNCATE {first}")  # by hand, as the owner
    report = retention.prune(targets=["testapp.TicketEvent"], overrides=AGED)
    assert report.rows[TICKETS] == 25 - truncated
    # Events that vanished unseen were never taken off: their context is kept (an error upwards).
    assert ContextCount.objects.get(context_id=_tickets_context()).events == truncated
