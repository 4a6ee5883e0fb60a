"""Schema changes in the feed: the DDL log of ``initlogging`` becomes ``schema.altered`` changes, in
order with the row changes of their table."""

from __future__ import annotations

import io
import threading

import psycopg
import pytest
from django.core.management import call_command
from django.db import connection

from audit_stream import config
from audit_stream.models import Change, WebhookEndpoint, WebhookMessage
from audit_stream.stream import fold, wakeup
from tests.testapp.models import Supplier

pytestmark = pytest.mark.django_db(transaction=True)

ROW_LOG = "audit_stream_row_log"
SUPPLIERS = "testapp.supplier"


@pytest.fixture
def logged():
    """Schema-wide logging; the column the tests add is dropped afterwards (DDL is not rolled back)."""
    call_command("initlogging", stdout=io.StringIO())
    yield
    call_command("droplogging", stdout=io.StringIO())
    with connection.cursor() as cursor:
        cursor.execute("ALTER TABLE testapp_supplier DROP COLUMN IF EXISTS region")
        cursor.execute("DROP TABLE IF EXISTS doomed")


def _sql(statement, params=None):
    with connection.cursor() as cursor:
        cursor.execute(statement, params)


def _feed(model=SUPPLIERS):
    return list(Change.objects.filter(model=model).order_by("id"))


def test_a_schema_change_arrives_between_the_row_changes_before_and_after_it(logged):
    """A consumer sees "column added" before the first row that has the column."""
    Supplier.objects.create(name="Acme")
    _sql("ALTER TABLE testapp_supplier ADD COLUMN region text")
    _sql("INSERT INTO testapp_supplier (name, rating, active, region) VALUES ('Bcme', 0, true, 'north')")
    fold.fold(ROW_LOG)
    feed = _feed()
    assert [c.label for c in feed] == ["insert", "schema.altered", "insert"]
    assert [c.event_id for c in feed] == sorted(c.event_id for c in feed)
    schema = feed[1]
    assert (schema.event_table, schema.object_id) == ("audit_stream_ddl_log", None)
    assert schema.diff == {"region": [None, "text"]}
    assert schema.snapshot["table"] == "public.testapp_supplier"
    assert schema.snapshot["kind"] == "alter"
    assert "ADD COLUMN region" in schema.snapshot["statement"]
    assert {"name": "region", "type": "text"} in schema.snapshot["columns"]
    assert "region" not in feed[0].snapshot and feed[2].snapshot["region"] == "north"


def test_a_schema_only_transaction_is_work_for_the_idle_check(logged):
    """An ALTER with no row change is seen by the idle check, so the worker folds it without waiting."""
    Supplier.objects.create(name="Acme")
    fold.fold(ROW_LOG)
    assert not wakeup.has_work(ROW_LOG)
    _sql("ALTER TABLE testapp_supplier ADD COLUMN region text")
    assert wakeup.has_work(ROW_LOG)
    fold.fold(ROW_LOG)
    assert not wakeup.has_work(ROW_LOG)
    assert [c.label for c in _feed()] == ["insert", "schema.altered"]


def test_a_schema_only_transaction_wakes_an_idle_worker(logged):
    """The DDL log's functions wake an idle worker as the row triggers do: a NOTIFY for the row log."""
    fold.fold(ROW_LOG)
    settings = connection.settings_dict
    with psycopg.connect(
        host=settings["HOST"],
        port=settings["PORT"],
        dbname=settings["NAME"],
        user=settings["USER"],
        autocommit=True,
    ) as listener:
        listener.execute(f"LISTEN {config.channel()}")
        wakeup.arm()
        _sql("ALTER TABLE testapp_supplier ADD COLUMN region text")
        received = [n.payload for n in listener.notifies(timeout=10, stop_after=1)]
    assert received == [ROW_LOG]


def test_rows_written_concurrently_with_the_schema_change_fall_on_the_right_side_of_it(logged):
    """A writer keeps inserting while the column is added: rows before it lack it, rows after have it."""
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer():
        try:
            with psycopg.connect(**connection.get_connection_params(), autocommit=True) as conn:
                i = 0
                while not stop.is_set() or i < 20:
                    conn.execute(
                        "INSERT INTO testapp_supplier (name, rating, active) VALUES (%s, 0, true)", [f"s{i}"]
                    )
                    i += 1
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        while Supplier.objects.count() < 10:  # the writer is under way
            pass
        _sql("ALTER TABLE testapp_supplier ADD COLUMN region text")
        before = Supplier.objects.count()
        while Supplier.objects.count() < before + 10:  # and goes on after
            pass
    finally:
        stop.set()
        thread.join()
    assert errors == []
    fold.fold(ROW_LOG)
    feed = _feed()
    labels = [c.label for c in feed]
    assert labels.count("schema.altered") == 1
    cut = labels.index("schema.altered")
    assert all("region" not in c.snapshot for c in feed[:cut])
    assert all("region" in c.snapshot for c in feed[cut + 1 :])
    assert cut >= 10 and len(feed) - cut - 1 >= 10


def test_a_transaction_that_alters_and_writes_reads_back_in_that_order(logged):
    """for_transaction() and the payload count include the schema change."""
    WebhookEndpoint.objects.create(url="https://93.184.215.14/hook")  # public, never called
    with psycopg.connect(**connection.get_connection_params()) as conn:
        conn.execute("ALTER TABLE testapp_supplier ADD COLUMN region text")
        conn.execute("INSERT INTO testapp_supplier (name, rating, active, region) VALUES ('A', 0, true, 'n')")
        xid = int(conn.execute("SELECT pg_current_xact_id()::text").fetchone()[0])
        conn.commit()
    fold.fold(ROW_LOG)
    assert [c.label for c in Change.objects.for_transaction(xid)] == ["schema.altered", "insert"]
    payloads = [m.payload["data"]["transaction"] for m in WebhookMessage.objects.all()]
    assert [p["changes"] for p in payloads] == [2, 2]


def test_webhook_filters_select_schema_changes_by_label(logged):
    """An endpoint that filters on the label "schema.altered" gets only schema changes."""
    endpoint = WebhookEndpoint.objects.create(
        url="https://93.184.215.14/hook", filter_labels=["schema.altered"]
    )
    Supplier.objects.create(name="Acme")
    _sql("ALTER TABLE testapp_supplier ADD COLUMN region text")
    fold.fold(ROW_LOG)
    (message,) = WebhookMessage.objects.filter(endpoint=endpoint)
    assert message.event_type == "testapp.supplier.schema.altered"
    data = message.payload["data"]
    assert (data["label"], data["model"], data["object_id"]) == ("schema.altered", SUPPLIERS, None)
    assert data["snapshot"]["kind"] == "alter"
    assert data["diff"] == {"region": [None, "text"]}


def test_renames_and_drops_are_schema_changes_too(logged):
    """kind "rename" names the former table; kind "drop" lists the columns it had."""
    _sql("CREATE TABLE doomed (id int PRIMARY KEY)")
    call_command("initlogging", stdout=io.StringIO())
    _sql("ALTER TABLE doomed RENAME TO doomed_too")
    _sql("DROP TABLE doomed_too")
    fold.fold(ROW_LOG)
    rename, drop = Change.objects.filter(label="schema.altered").order_by("id")
    assert rename.snapshot["kind"] == "rename"
    assert (rename.snapshot["former_name"], rename.snapshot["table"]) == (
        "public.doomed",
        "public.doomed_too",
    )
    assert drop.snapshot["kind"] == "drop"
    assert drop.diff == {"id": ["integer", None]}
