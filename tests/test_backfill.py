"""``manage.py backfill_history``: one ``backfill`` event per row that predates its tracking."""

from __future__ import annotations

import io
import threading
from decimal import Decimal

import psycopg
import pytest
from django.core.management import CommandError, call_command
from django.db import connection, connections, transaction

import audit_stream
from audit_stream import rowlog
from audit_stream.history import backfill
from audit_stream.models import Change, Context, RowLog, WebhookEndpoint, WebhookMessage
from audit_stream.stream import fold
from tests.testapp.models import Book, BookEvent, BookTagsEvent, Supplier, Tag

pytestmark = pytest.mark.django_db(transaction=True)


def insert_untracked(table, rows):
    """Insert rows with no trigger firing, as if they predated tracking; return their ids."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL session_replication_role = replica")
        ids = []
        for code, title, price in rows:
            cursor.execute(
                f"INSERT INTO {table} (code, title, price) VALUES (%s, %s, %s) RETURNING id",
                [code, title, price],
            )
            ids.append(cursor.fetchone()[0])
        return ids


def old_books(n, start=0):
    return insert_untracked("testapp_book", [(f"o{i}", f"Old {i}", i) for i in range(start, start + n)])


def run(*args) -> str:
    out = io.StringIO()
    call_command("backfill_history", *args, stdout=out)
    return out.getvalue()


def events_per_book():
    return sorted(BookEvent.objects.values_list("pgh_obj_id", "pgh_label"))


def test_backfill_writes_one_event_per_row_without_history_in_a_backfill_context():
    """Old rows get one 'backfill' event with their values; rows with history get none."""
    ids = old_books(3)
    tracked = Book.objects.create(code="new", title="New", price=5)
    output = run("testapp.Book", "--batch-size", "2")
    assert events_per_book() == sorted([(tracked.pk, "snapshot")] + [(i, "backfill") for i in ids])
    event = BookEvent.objects.get(pgh_obj_id=ids[1])
    assert (event.code, event.title, event.price) == ("o1", "Old 1", Decimal("1.00"))
    assert Context.objects.get(pk=event.pgh_context_id).metadata == {"command": "backfill_history"}
    assert "7 backfill events written" in output  # 3 rows, and the tags of all 4 books
    assert "1 of 4 rows already had history" in output


def test_backfilled_rows_can_be_read_as_of_a_later_moment():
    """After the backfill, as_of finds the old rows."""
    (pk,) = old_books(1)
    run("testapp.Book")
    with connection.cursor() as cursor:
        cursor.execute("SELECT clock_timestamp()")
        now = cursor.fetchone()[0]
    assert audit_stream.as_of(Book(pk=pk), now).title == "Old 0"


def test_backfill_twice_writes_nothing_the_second_time():
    """Idempotent: a second run finds every row with history."""
    old_books(5)
    run("testapp.Book", "--batch-size", "2")
    assert "0 backfill events written" in run("testapp.Book")
    assert BookEvent.objects.count() == 5


def test_a_backfill_killed_midway_completes_when_run_again():
    """Batches are committed one by one: a run that dies keeps them and the next run does the rest."""
    old_books(7)

    def die_after_two(scanned, written, calls=[]):  # noqa: B006
        calls.append(scanned)
        if len(calls) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        backfill.backfill(Book, batch_size=3, progress=die_after_two)
    assert BookEvent.objects.count() == 6
    assert backfill.backfill(Book, batch_size=3) == 2  # the last row and its tags
    assert sorted(set(BookEvent.objects.values_list("pgh_obj_id", flat=True))) == sorted(
        Book.objects.values_list("pk", flat=True)
    )
    assert BookEvent.objects.count() == 7


def test_a_dry_run_writes_nothing_and_says_how_many_rows_need_it():
    """--dry-run counts and changes nothing."""
    old_books(4)
    output = run("testapp.Book", "--dry-run")
    assert "4 of 4 rows have no history" in output
    assert not BookEvent.objects.exists()


def test_bad_arguments_are_refused_with_what_to_do():
    """An unknown model, a model without history, a batch size of 0."""
    with pytest.raises(CommandError, match="Unknown model"):
        run("testapp.Nope")
    with pytest.raises(CommandError, match="track it with"):
        run("testapp.Customer")
    with pytest.raises(CommandError, match="at least 1"):
        run("testapp.Book", "--batch-size", "0")


def _second_connection():
    settings = connection.settings_dict
    return psycopg.connect(
        host=settings["HOST"], port=settings["PORT"] or 5432, user=settings["USER"], dbname=settings["NAME"]
    )


def _wait_until_blocked(pid_holder, timeout=10):
    """Until the backfill's connection waits on a row lock (pg_stat_activity)."""
    import time

    deadline = time.monotonic() + timeout
    with _second_connection() as probe:
        probe.autocommit = True
        while time.monotonic() < deadline:
            if pid_holder and probe.execute(
                "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = %s", [pid_holder[0]]
            ).fetchone() == (True,):
                return
            time.sleep(0.01)  # polling a condition, not waiting for time to pass
    raise AssertionError("the backfill never waited for the writer's row lock")


def test_a_row_changed_by_a_concurrent_writer_gets_no_backfill_event_after_its_change():
    """A writer's open transaction on an old row: the backfill waits for it, then skips the row."""
    ids = old_books(6)
    writer = _second_connection()
    writer.execute("UPDATE testapp_book SET title = 'Changed' WHERE id = %s", [ids[2]])  # not committed

    pid, result = [], {}

    def backfill_in_thread():
        try:
            with connections["default"].cursor() as cursor:
                cursor.execute("SELECT pg_backend_pid()")
                pid.append(cursor.fetchone()[0])
            result["written"] = backfill.backfill(Book, batch_size=4)
        finally:
            connections.close_all()

    thread = threading.Thread(target=backfill_in_thread)
    thread.start()
    try:
        _wait_until_blocked(pid)
        writer.commit()
    finally:
        writer.close()  # rolls back if the backfill never waited: the test fails, and ends
        thread.join(timeout=60)
    assert result["written"] == 5 + 6  # 5 rows, and the tags of all 6
    labels = dict(BookEvent.objects.values_list("pgh_obj_id", "pgh_label"))
    assert labels == {i: ("snapshot" if i == ids[2] else "backfill") for i in ids}
    assert BookEvent.objects.get(pgh_obj_id=ids[2]).title == "Changed"


def test_the_fold_turns_backfill_events_into_changes_sent_only_to_endpoints_that_ask_for_them(settings):
    """A Change per backfill event; webhooks only where the label filter includes 'backfill'."""
    settings.AUDIT_STREAM = {**settings.AUDIT_STREAM, "WEBHOOK_ALLOWED_NETWORKS": ["127.0.0.0/8"]}
    everything = WebhookEndpoint.objects.create(url="http://127.0.0.1:9/all")
    backfills = WebhookEndpoint.objects.create(url="http://127.0.0.1:9/backfill", filter_labels=["backfill"])
    ids = old_books(2)
    backfill.backfill(Book)
    fold.fold("testapp_bookevent")
    changes = Change.objects.filter(model="testapp.book").order_by("object_id")
    assert [(c.object_id, c.label, c.diff["title"]) for c in changes] == [
        (str(ids[0]), "backfill", [None, "Old 0"]),
        (str(ids[1]), "backfill", [None, "Old 1"]),
    ]
    assert WebhookMessage.objects.filter(endpoint=backfills).count() == 2
    assert not WebhookMessage.objects.filter(endpoint=everything).exists()


@pytest.fixture
def logged_suppliers():
    """Supplier logged by initlogging; logging removed afterwards."""
    call_command("initlogging", stdout=io.StringIO())
    yield
    rowlog.drop_logging()


def test_a_logged_table_is_backfilled_into_the_row_log_and_revert_rebuilds_from_the_entry(
    logged_suppliers,
):
    """Row-log backfill: whole rows, label 'backfill', once; revert's rebuild reads the entry as a version."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL session_replication_role = replica")
        cursor.execute("INSERT INTO testapp_supplier (name, rating, active) VALUES ('old', 1, true)")
    Supplier.objects.create(name="acme", rating=1)
    assert backfill.backfill(Supplier) == 1
    assert backfill.backfill(Supplier) == 0
    entry = RowLog.objects.get(pgh_label="backfill")
    assert (entry.logged_table, entry.new_data["name"], entry.old_data) == (
        "public.testapp_supplier",
        "old",
        None,
    )
    Supplier.objects.filter(name="old").update(rating=3)
    assert Decimal(str(rowlog.recorded_state(entry)["rating"])) == Decimal("1")


def test_tracked_many_to_many_fields_get_their_current_set():
    """A book older than its tracking: its tags' set is recorded too, once."""
    (pk,) = old_books(1)
    red = Tag.objects.create(name="red")
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL session_replication_role = replica")
        cursor.execute("INSERT INTO testapp_book_tags (book_id, tag_id) VALUES (%s, %s)", [pk, red.pk])
    assert backfill.backfill(Book) == 2
    assert backfill.backfill(Book) == 0
    assert list(BookTagsEvent.objects.values_list("pgh_obj_id", "pgh_label", "tags")) == [
        (pk, "backfill", [red.pk])
    ]


def test_a_backfill_process_killed_with_sigkill_completes_when_run_again():
    """A real kill: `manage.py backfill_history` SIGKILLed between batches; the rerun finishes the job."""
    import os
    import signal
    import subprocess
    import sys
    import time

    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL session_replication_role = replica")
        cursor.execute(
            "INSERT INTO testapp_book (code, title, price)"
            " SELECT 'k' || i, 'Old ' || i, 1 FROM generate_series(1, 100000) AS i"
        )
    settings = connection.settings_dict
    url = f"postgres://{settings['USER']}@{settings['HOST']}:{settings['PORT'] or 5432}/{settings['NAME']}"
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings", "DATABASE_URL": url}
    process = subprocess.Popen(
        [sys.executable, "-m", "django", "backfill_history", "testapp.Book", "--batch-size", "200"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while BookEvent.objects.count() < 2_000 and time.monotonic() < deadline:
            time.sleep(0.01)  # polling a condition
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(timeout=30)
    done = BookEvent.objects.count()
    assert 2_000 <= done < 100_000, done  # killed midway, its committed batches kept
    backfill.backfill(Book, batch_size=5_000)
    assert BookEvent.objects.count() == 100_000
    assert BookEvent.objects.values("pgh_obj_id").distinct().count() == 100_000
