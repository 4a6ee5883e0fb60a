"""Renamed tables: the stream goes on from where it was, without folding or sending anything twice."""

from __future__ import annotations

import io

import pytest
from django.apps import apps
from django.core.management import call_command
from django.core.management.commands import makemigrations
from django.db import connection, transaction
from django.db.migrations import Migration
from django.db.migrations.loader import MigrationLoader
from django.db.migrations.state import ProjectState

import audit_stream
from audit_stream import tracking
from audit_stream.models import Change, Checkpoint, WebhookEndpoint, WebhookMessage
from audit_stream.stream import fold
from tests.testapp.models import Product, ProductEvent, Supplier

pytestmark = pytest.mark.django_db(transaction=True)

PRODUCTS = "testapp_productevent"
RENAMED = "testapp_productevent_v2"
ROW_LOG = "audit_stream_row_log"


def _forget_columns(model) -> None:
    """Drop the columns Django cached with the table's name (Field.cached_col), so the name can change."""
    for field in model._meta.concrete_fields:
        field.__dict__.pop("cached_col", None)


@pytest.fixture
def rename_event_table(monkeypatch):
    """Rename ProductEvent's table as ``AlterModelTable`` does (the model follows), and back afterwards."""

    def _rename():
        with connection.schema_editor() as editor:
            editor.alter_db_table(ProductEvent, PRODUCTS, RENAMED)
        monkeypatch.setattr(ProductEvent._meta, "db_table", RENAMED)
        monkeypatch.delitem(tracking._event_models, PRODUCTS)
        monkeypatch.setitem(tracking._event_models, RENAMED, ProductEvent)
        _forget_columns(ProductEvent)
        tracking.install_create_event_functions()  # as migrate's post_migrate does

    yield _rename
    monkeypatch.undo()
    _forget_columns(ProductEvent)  # else later tests query the renamed table's columns
    with connection.cursor() as cursor:
        cursor.execute(f"ALTER TABLE IF EXISTS {RENAMED} RENAME TO {PRODUCTS}")
    tracking.install_create_event_functions()


def _record(product, **values):
    """A snapshot event of ``product`` with ``values`` (the triggers still name the old table).

    The row is changed with triggers off, then recorded by ``create_event``,
    which snapshots the live row.
    """
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL session_replication_role = replica")
        Product.objects.filter(pk=product.pk).update(**values)
    audit_stream.create_event(product, label="snapshot")


def test_a_renamed_event_table_continues_from_its_checkpoint(rename_event_table):
    """Five folded events stay five changes and five messages after the table is renamed."""
    WebhookEndpoint.objects.create(url="http://93.184.215.14/hook", filter_models=["testapp.product"])
    products = [Product.objects.create(name=f"p{i}") for i in range(5)]
    fold.fold(PRODUCTS)
    rename_event_table()
    fold.fold(RENAMED)
    _record(products[0], stock=7)
    fold.fold(RENAMED)
    assert Change.objects.count() == WebhookMessage.objects.count() == 6
    assert Checkpoint.objects.get(event_table=RENAMED).former_names == [PRODUCTS]
    assert not Checkpoint.objects.filter(event_table=PRODUCTS).exists()


def test_a_renamed_event_table_diffs_against_changes_folded_under_its_former_name(rename_event_table):
    """The previous state of an object is found under the table's former name."""
    product = Product.objects.create(name="lamp")
    fold.fold(PRODUCTS)
    rename_event_table()
    _record(product, stock=7)
    fold.fold(RENAMED)
    latest = Change.objects.get(event_table=RENAMED)
    assert latest.diff == {"stock": [0, 7]}


# --- a user-declared event model's db_table changes: makemigrations, then migrate ------------------------


def test_changing_an_event_models_db_table_makes_a_migration_that_applies():
    """The trigger on the event table is created after the table is renamed, not before."""
    loader = MigrationLoader(connection)
    before = loader.project_state()
    after = ProjectState.from_apps(apps)
    after.models["testapp", "labelevent"].options["db_table"] = "testapp_label_history"
    changes = makemigrations.Command.autodetector(before, after).changes(graph=loader.graph)
    migration = Migration("rename_label_history", "testapp")
    migration.operations = [op for m in changes["testapp"] for op in m.operations]
    with transaction.atomic():
        with connection.schema_editor(atomic=False) as editor:
            migration.apply(before, editor)
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT tgname FROM pg_trigger WHERE tgrelid = 'testapp_label_history'::regclass"
                " AND NOT tgisinternal"
            )
            assert [name.split("_")[1:3] for (name,) in cursor.fetchall()] == [["append", "only"]]
        transaction.set_rollback(True)


# --- tables logged by initlogging ---------------------------------------------------------------------


@pytest.fixture
def loose(sql):
    """A table without a model, logged by initlogging."""
    sql("CREATE TABLE loose (id int PRIMARY KEY, a text, b text)")
    call_command("initlogging", stdout=io.StringIO())
    yield
    call_command("droplogging", stdout=io.StringIO())
    sql("DROP TABLE IF EXISTS loose")
    sql("DROP TABLE IF EXISTS loose_v2")


def _feed(object_id="1"):
    return list(
        Change.objects.filter(event_table=ROW_LOG, object_id=object_id)
        .order_by("event_id")
        .values_list("model", "snapshot")
    )


def test_rows_logged_before_a_rename_and_folded_after_it_belong_to_the_renamed_table(loose, sql):
    """Both entries name the table as it is now, and the update patches the inserted row."""
    sql("INSERT INTO loose VALUES (1, 'a1', 'b1')")
    sql("ALTER TABLE loose RENAME TO loose_v2")
    sql("UPDATE loose_v2 SET a = 'a2' WHERE id = 1")
    fold.fold(ROW_LOG)
    assert _feed() == [
        ("public.loose_v2", {"id": 1, "a": "a1", "b": "b1"}),
        ("public.loose_v2", {"id": 1, "a": "a2", "b": "b1"}),
    ]


def test_a_change_after_a_rename_continues_from_the_state_folded_under_the_former_name(loose, sql):
    """The last known state is found under the name the table had when it was folded."""
    sql("INSERT INTO loose VALUES (1, 'a1', 'b1')")
    fold.fold(ROW_LOG)
    sql("ALTER TABLE loose RENAME TO loose_v2")
    sql("UPDATE loose_v2 SET a = 'a2' WHERE id = 1")
    fold.fold(ROW_LOG)
    assert _feed()[-1] == ("public.loose_v2", {"id": 1, "a": "a2", "b": "b1"})


def test_a_model_table_renamed_away_and_back_keeps_its_model_label(sql):
    """An entry logged while the table had another name is still a change of the model."""
    call_command("initlogging", stdout=io.StringIO())
    try:
        supplier = Supplier.objects.create(name="Acme")
        fold.fold(ROW_LOG)
        sql("ALTER TABLE testapp_supplier RENAME TO supplier_before")
        sql("UPDATE supplier_before SET rating = 5 WHERE id = %s", [supplier.pk])
        sql("ALTER TABLE supplier_before RENAME TO testapp_supplier")
        fold.fold(ROW_LOG)
    finally:
        sql("ALTER TABLE IF EXISTS supplier_before RENAME TO testapp_supplier")
        call_command("droplogging", stdout=io.StringIO())
    model, snapshot = _feed(str(supplier.pk))[-1]
    assert (model, snapshot["name"], snapshot["rating"]) == ("testapp.supplier", "Acme", 5)


@pytest.mark.parametrize("fold_before_the_drop", [True, False], ids=["folded-before", "same-batch"])
def test_a_dropped_column_leaves_the_snapshots_after_the_drop(loose, sql, fold_before_the_drop):
    """Snapshots after ``DROP COLUMN`` no longer carry the column; the ones before keep it."""
    sql("INSERT INTO loose VALUES (1, 'a1', 'b1')")
    if fold_before_the_drop:
        fold.fold(ROW_LOG)
    sql("ALTER TABLE loose DROP COLUMN b")
    sql("UPDATE loose SET a = 'a2' WHERE id = 1")
    fold.fold(ROW_LOG)
    assert [snapshot for _, snapshot in _feed()] == [{"id": 1, "a": "a1", "b": "b1"}, {"id": 1, "a": "a2"}]


def test_a_renamed_column_leaves_under_its_old_name_and_returns_under_the_new_one(loose, sql):
    """After ``RENAME COLUMN`` the old key leaves the state; the new one appears at its next change."""
    sql("INSERT INTO loose VALUES (1, 'a1', 'b1')")
    fold.fold(ROW_LOG)
    sql("ALTER TABLE loose RENAME COLUMN b TO c")
    sql("UPDATE loose SET a = 'a2' WHERE id = 1")
    sql("UPDATE loose SET c = 'c3' WHERE id = 1")
    fold.fold(ROW_LOG)
    after = [snapshot for _, snapshot in _feed()][1:]
    assert after == [{"id": 1, "a": "a2"}, {"id": 1, "a": "a2", "c": "c3"}]
