"""Schema-wide logging: ``initlogging``, the row log, DDL awareness and ``droplogging``."""

from __future__ import annotations

import datetime
import io
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.test import override_settings

import audit_stream
from audit_stream import rowlog
from audit_stream.models import DdlLog, RowLog
from tests.testapp.models import Customer, Product, Supplier

pytestmark = pytest.mark.django_db

SUPPLIER = "public.testapp_supplier"


def initlogging(*args) -> str:
    out = io.StringIO()
    call_command("initlogging", *args, stdout=out, stderr=out)
    return out.getvalue()


def row_log(table=SUPPLIER):
    return list(
        RowLog.objects.filter(logged_table=table)
        .order_by("pgh_id")
        .values_list("pgh_label", "pgh_obj_id", "old_data", "new_data")
    )


def triggers_on(sql, table):
    return sorted(
        name
        for (name,) in sql(
            "SELECT tgname FROM pg_trigger"
            " WHERE tgrelid = to_regclass(%s) AND tgname LIKE 'audit_stream_log%%'",
            [table],
        )
    )


@pytest.fixture
def logged():
    """The test database logged schema-wide (rolled back with the test)."""
    return initlogging()


# --- initlogging -----------------------------------------------------------------------------------


def test_initlogging_puts_the_row_log_triggers_on_an_untracked_table(logged, sql):
    assert triggers_on(sql, "testapp_supplier") == [
        "audit_stream_log_delete",
        "audit_stream_log_insert",
        "audit_stream_log_truncate",
        "audit_stream_log_update",
    ]
    assert f"{SUPPLIER}" in logged and "logging" in logged


@pytest.mark.parametrize(
    ("table", "reason"),
    [
        ("testapp_product", "tracked with @track"),
        ("testapp_productevent", "event table"),
        ("audit_stream_change", "audit_stream's own table"),
        ("audit_stream_row_log", "audit_stream's own table"),
        ("django_migrations", "migration history"),
        ("django_session", "IGNORE_TABLES"),
    ],
)
def test_initlogging_leaves_ignored_tables_alone_and_says_why(logged, sql, table, reason):
    assert triggers_on(sql, table) == []
    line = next(line for line in logged.splitlines() if f"public.{table} " in line)
    assert "ignored" in line and reason in line


@override_settings(AUDIT_STREAM={"IGNORE_TABLES": ["testapp_supp*"]})
def test_ignore_tables_accepts_shell_patterns(sql):
    initlogging()
    assert triggers_on(sql, "testapp_supplier") == []
    assert triggers_on(sql, "testapp_customer") != []
    assert triggers_on(sql, "django_session") != []  # the setting replaces the default list


@override_settings(PG_MEMENTO_IGNORE_TABLES=["public.testapp_customer"])
def test_pg_memento_ignore_tables_is_honoured(sql):
    initlogging()
    assert triggers_on(sql, "testapp_customer") == []
    assert triggers_on(sql, "testapp_supplier") != []


def test_initlogging_stops_logging_a_table_ignored_since(logged, sql):
    with override_settings(AUDIT_STREAM={"IGNORE_TABLES": ["testapp_supplier"]}):
        initlogging()
    assert triggers_on(sql, "testapp_supplier") == []


def test_dry_run_changes_nothing(sql):
    output = initlogging("--dry-run")
    assert "would log" in output and "dry run" in output
    assert sql("SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'audit_stream_log%%'") == [(0,)]
    assert sql("SELECT to_regproc('_audit_stream_log_rows')") == [(None,)]


def test_rerun_is_idempotent_and_picks_up_new_tables(logged, sql):
    sql("CREATE TABLE late_table (id int PRIMARY KEY, v text)")
    output = initlogging()
    assert "public.testapp_supplier" in output
    supplier = next(line for line in output.splitlines() if "public.testapp_supplier " in line)
    late = next(line for line in output.splitlines() if "public.late_table " in line)
    assert "already logged" in supplier
    assert "logging" in late and "already" not in late
    assert len(triggers_on(sql, "testapp_supplier")) == 4


def test_a_table_without_primary_key_is_skipped_with_the_reason(sql):
    sql("CREATE TABLE keyless (v text)")
    output = initlogging()
    line = next(line for line in output.splitlines() if "public.keyless " in line)
    assert "skipped" in line and "no primary key" in line
    assert triggers_on(sql, "keyless") == []


def test_an_unknown_schema_is_a_clear_error():
    from django.core.management import CommandError

    with pytest.raises(CommandError, match="no schema 'nope'"):
        initlogging("--schema", "nope")


def test_another_schema_can_be_logged(sql):
    sql("CREATE SCHEMA legacy")
    sql("CREATE TABLE legacy.accounts (code text PRIMARY KEY, balance numeric)")
    initlogging("--schema", "legacy")
    sql("INSERT INTO legacy.accounts VALUES ('a', 1.50)")
    assert row_log("legacy.accounts") == [("insert", "a", None, {"code": "a", "balance": Decimal("1.50")})]


# --- what is logged --------------------------------------------------------------------------------


def test_an_orm_insert_logs_the_whole_row(logged):
    supplier = Supplier.objects.create(name="Acme", rating=Decimal("4.125"), since=datetime.date(2020, 1, 2))
    assert row_log() == [
        (
            "insert",
            str(supplier.pk),
            None,
            {
                "id": supplier.pk,
                "name": "Acme",
                "rating": Decimal("4.125"),
                "active": True,
                "since": "2020-01-02",
                "customer_id": None,
            },
        )
    ]


def test_an_update_logs_only_the_changed_columns_before_and_after(logged):
    supplier = Supplier.objects.create(name="Acme", rating=Decimal("1"))
    supplier.rating = Decimal("2.5")
    supplier.save()
    assert row_log()[-1] == (
        "update",
        str(supplier.pk),
        {"rating": Decimal("1.000")},
        {"rating": Decimal("2.500")},
    )


def test_an_update_that_changes_nothing_is_not_logged(logged):
    supplier = Supplier.objects.create(name="Acme")
    supplier.save()
    assert [label for label, *_ in row_log()] == ["insert"]


def test_a_delete_logs_the_whole_old_row(logged):
    supplier = Supplier.objects.create(name="Acme")
    pk = supplier.pk
    supplier.delete()
    label, obj, old, new = row_log()[-1]
    assert (label, obj, new) == ("delete", str(pk), None)
    assert old["name"] == "Acme" and old["id"] == pk


def test_bulk_writes_and_raw_sql_are_logged_row_by_row(logged, sql):
    Supplier.objects.bulk_create([Supplier(name=f"s{i}") for i in range(50)])
    Supplier.objects.filter(name__startswith="s1").update(active=False)
    sql("UPDATE testapp_supplier SET rating = 9 WHERE name IN ('s2', 's3')")
    sql("DELETE FROM testapp_supplier WHERE name = 's4'")
    labels = [label for label, *_ in row_log()]
    assert labels.count("insert") == 50
    assert labels.count("update") == 11 + 2
    assert labels.count("delete") == 1


def test_truncate_logs_every_row_as_deleted(logged, sql):
    Supplier.objects.bulk_create([Supplier(name=f"s{i}") for i in range(5)])
    sql("SET CONSTRAINTS ALL IMMEDIATE")
    with audit_stream.context(reason="reset"):
        sql("TRUNCATE testapp_supplier")
    deletes = RowLog.objects.filter(pgh_label="delete")
    assert sorted(deletes.values_list("old_data__name", flat=True)) == [f"s{i}" for i in range(5)]
    assert {entry.pgh_context.metadata["reason"] for entry in deletes} == {"reset"}


def test_an_update_of_the_primary_key_is_logged_as_delete_and_insert(logged, sql):
    supplier = Supplier.objects.create(name="Acme")
    sql("UPDATE testapp_supplier SET id = 999999 WHERE id = %s", [supplier.pk])
    assert [(label, obj) for label, obj, *_ in row_log()][-2:] == [
        ("delete", str(supplier.pk)),
        ("insert", "999999"),
    ]


def test_the_context_is_recorded(logged):
    with audit_stream.context(user=7, reason="import"):
        Supplier.objects.create(name="Acme")
    entry = RowLog.objects.get()
    assert entry.pgh_context.metadata == {"user": 7, "reason": "import"}


def test_the_row_log_is_append_only(logged, sql):
    from django.db import transaction
    from django.db.utils import ProgrammingError

    Supplier.objects.create(name="Acme")
    with pytest.raises(ProgrammingError, match="append-only"), transaction.atomic():
        sql("DELETE FROM audit_stream_row_log")


# --- DDL ---------------------------------------------------------------------------------------------


def test_a_column_added_after_initlogging_is_logged_without_a_rerun(logged, sql):
    supplier = Supplier.objects.create(name="Acme")  # the trigger's plans are cached in this session
    sql("SET CONSTRAINTS ALL IMMEDIATE")  # (Django's deferred FK check would block ALTER TABLE)
    sql("ALTER TABLE testapp_supplier ADD COLUMN region text")
    sql("UPDATE testapp_supplier SET region = 'north' WHERE id = %s", [supplier.pk])
    sql("INSERT INTO testapp_supplier (name, rating, active, region) VALUES ('Bcme', 0, true, 'south')")
    assert row_log()[1] == ("update", str(supplier.pk), {"region": None}, {"region": "north"})
    assert row_log()[2][3]["region"] == "south"


def test_alter_table_is_recorded_with_the_columns_before_and_after(logged, sql):
    sql("ALTER TABLE testapp_supplier ADD COLUMN region text")
    entry = DdlLog.objects.get()
    assert entry.pgh_label == "alter"
    assert entry.logged_table == SUPPLIER
    assert "ADD COLUMN region" in entry.command
    assert {"name": "region", "type": "text"} in entry.columns_after
    assert {"name": "region", "type": "text"} not in entry.columns_before


def test_a_rename_is_recorded_and_logging_goes_on(logged, sql):
    sql("ALTER TABLE testapp_supplier RENAME TO testapp_vendor")
    entry = DdlLog.objects.get()
    assert (entry.pgh_label, entry.former_name, entry.logged_table) == (
        "rename",
        SUPPLIER,
        "public.testapp_vendor",
    )
    sql("INSERT INTO testapp_vendor (name, rating, active) VALUES ('Acme', 0, true)")
    assert [label for label, *_ in row_log("public.testapp_vendor")] == ["insert"]


def test_renaming_the_primary_key_column_moves_the_triggers(logged, sql):
    sql("ALTER TABLE testapp_supplier RENAME COLUMN id TO supplier_id")
    sql("INSERT INTO testapp_supplier (supplier_id, name, rating, active) VALUES (42, 'Acme', 0, true)")
    assert row_log()[-1][:2] == ("insert", "42")


def test_dropping_a_logged_table_is_recorded(logged, sql):
    sql("CREATE TABLE doomed (id int PRIMARY KEY)")
    initlogging()
    sql("DROP TABLE doomed")
    entry = DdlLog.objects.get(pgh_label="drop")
    assert entry.logged_table == "public.doomed"
    assert entry.columns_before == [{"name": "id", "type": "integer"}]


def test_ddl_on_tables_that_are_not_logged_is_not_recorded(logged, sql):
    sql("ALTER TABLE django_session ADD COLUMN extra text")
    assert not DdlLog.objects.exists()


# --- droplogging ---------------------------------------------------------------------------------------


def test_droplogging_leaves_no_trigger_behind(logged, sql):
    Supplier.objects.create(name="Acme")
    out = io.StringIO()
    call_command("droplogging", stdout=out)
    assert sql("SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'audit_stream_log%%'") == [(0,)]
    assert sql("SELECT count(*) FROM pg_event_trigger WHERE evtname LIKE 'audit_stream%%'") == [(0,)]
    assert sql("SELECT count(*) FROM pg_proc WHERE proname LIKE '\\_audit\\_stream\\_log%%'") == [(0,)]
    assert "public.testapp_supplier: no longer logged" in out.getvalue()
    Supplier.objects.create(name="Bcme")
    assert len(row_log()) == 1  # the history stays; nothing new is logged


def test_is_logged(logged):
    assert rowlog.is_logged(Supplier)
    assert not rowlog.is_logged(Product)
    assert rowlog.is_logged(Customer)


def test_table_restricts_initlogging_to_the_tables_named(sql):
    output = initlogging("--table", "testapp_supplier")
    assert "public.testapp_supplier" in output and "public.testapp_customer" not in output
    assert triggers_on(sql, "testapp_supplier") != []
    assert triggers_on(sql, "testapp_customer") == []


def test_an_unknown_table_is_a_clear_error():
    from django.core.management import CommandError

    with pytest.raises(CommandError, match="No table 'nope' in schema 'public'"):
        initlogging("--table", "nope")


# --- many rows at once (the update path that compares typed columns) --------------------------------


def test_a_large_update_logs_only_what_changed_in_each_row(logged, sql):
    Supplier.objects.bulk_create([Supplier(name=f"s{i}", rating=i % 3) for i in range(30)])
    Supplier.objects.update(rating=1)  # 10 of the 30 already had 1
    updates = [(old, new) for label, _, old, new in row_log() if label == "update"]
    assert len(updates) == 20
    assert all(set(old) == set(new) == {"rating"} and new["rating"] == 1 for old, new in updates)


def test_a_large_update_of_primary_keys_is_logged_as_deletes_and_inserts(logged, sql):
    Supplier.objects.bulk_create([Supplier(name=f"s{i}") for i in range(20)])
    sql("UPDATE testapp_supplier SET id = id + 1000000")
    labels = [label for label, *_ in row_log()]
    assert labels.count("delete") == 20 and labels.count("insert") == 40


def test_columns_without_an_equality_operator_are_compared_too(sql):
    sql("CREATE TABLE shapes (id int PRIMARY KEY, doc json, spot point, tag text)")
    sql("INSERT INTO shapes SELECT i, '{\"a\": 1}', point(0, 0), 't' FROM generate_series(1, 20) AS i")
    initlogging()
    sql("UPDATE shapes SET doc = '{\"a\": 2}' WHERE id <= 15")  # 15 rows: many at once
    sql("UPDATE shapes SET spot = point(1, 1) WHERE id = 1")  # one row
    sql("UPDATE shapes SET tag = 't'")  # nothing changes
    entries = row_log("public.shapes")
    assert [(label, old, new) for label, _, old, new in entries][:1] == [
        ("update", {"doc": {"a": 1}}, {"doc": {"a": 2}})
    ]
    assert len(entries) == 16
    assert entries[-1][2:] == ({"spot": "(0,0)"}, {"spot": "(1,1)"})


def test_a_large_update_in_a_context_records_and_attaches_it(logged):
    Supplier.objects.bulk_create([Supplier(name=f"s{i}") for i in range(20)])
    with audit_stream.context(user=5):
        Supplier.objects.update(active=False)
    updates = RowLog.objects.filter(pgh_label="update").select_related("pgh_context")
    assert updates.count() == 20
    assert {entry.pgh_context.metadata["user"] for entry in updates} == {5}
