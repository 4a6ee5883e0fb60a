"""The row log of ``initlogging`` feeds the stream: change feed, webhooks, retention."""

from __future__ import annotations

import io
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.db import connection

import audit_stream
from audit_stream import retention
from audit_stream.models import Change, RowLog, WebhookEndpoint, WebhookMessage
from audit_stream.stream import fold, wakeup
from tests.testapp.models import Supplier

pytestmark = pytest.mark.django_db(transaction=True)

ROW_LOG = "audit_stream_row_log"


@pytest.fixture
def logged():
    call_command("initlogging", stdout=io.StringIO())
    yield
    call_command("droplogging", stdout=io.StringIO())


def changes(obj):
    return [(c.label, c.diff, c.snapshot) for c in Change.objects.for_object(obj)]


def test_inserts_updates_and_deletes_become_changes_of_the_model(logged):
    supplier = Supplier.objects.create(name="Acme", rating=Decimal("1.5"))
    Supplier.objects.filter(pk=supplier.pk).update(rating=Decimal("2"), active=False)
    pk = supplier.pk
    supplier.delete()
    fold.fold(ROW_LOG)
    rows = list(Change.objects.filter(model="testapp.supplier", object_id=str(pk)).order_by("event_id"))
    assert [c.label for c in rows] == ["insert", "update", "delete"]
    assert rows[0].diff["name"] == [None, "Acme"]
    assert rows[1].diff == {"rating": [Decimal("1.5"), Decimal("2")], "active": [True, False]}
    assert rows[2].diff["name"] == ["Acme", None]
    assert all(c.event_table == ROW_LOG for c in rows)


def test_each_change_carries_the_whole_state_after_it(logged):
    supplier = Supplier.objects.create(name="Acme")
    Supplier.objects.filter(pk=supplier.pk).update(rating=3)
    fold.fold(ROW_LOG)  # the next change continues from the folded state
    Supplier.objects.filter(pk=supplier.pk).update(name="Acme Ltd")
    Supplier.objects.filter(pk=supplier.pk).update(active=False)
    fold.fold(ROW_LOG)
    snapshots = [snapshot for _, _, snapshot in changes(supplier)]
    assert [(s["name"], s["rating"], s["active"]) for s in snapshots] == [
        ("Acme", 0, True),
        ("Acme", 3, True),
        ("Acme Ltd", 3, True),
        ("Acme Ltd", 3, False),
    ]


def test_a_row_older_than_the_logging_is_known_from_its_first_change(sql):
    supplier = Supplier.objects.create(name="Acme")
    call_command("initlogging", stdout=io.StringIO())
    try:
        Supplier.objects.filter(pk=supplier.pk).update(rating=4)
        fold.fold(ROW_LOG)
    finally:
        call_command("droplogging", stdout=io.StringIO())
    ((label, diff, snapshot),) = changes(supplier)
    assert (label, diff, snapshot) == ("update", {"rating": [0, 4]}, {"rating": 4})


def test_numbers_in_the_feed_are_exact(logged):
    supplier = Supplier.objects.create(name="Acme", rating=Decimal("0.100"))
    Supplier.objects.filter(pk=supplier.pk).update(rating=Decimal("0.300"))
    fold.fold(ROW_LOG)
    with connection.cursor() as cursor:
        cursor.execute("SELECT diff::text FROM audit_stream_change WHERE label = 'update'")
        assert cursor.fetchone()[0] == '{"rating": [0.100, 0.300]}'


def test_the_context_reaches_the_change(logged):
    with audit_stream.context(user=3):
        Supplier.objects.create(name="Acme")
    fold.fold(ROW_LOG)
    assert Change.objects.get().context.metadata == {"user": 3}


def test_a_table_without_a_model_is_named_by_its_table(logged, sql):
    sql("CREATE TABLE loose (id int PRIMARY KEY, v text)")
    call_command("initlogging", stdout=io.StringIO())
    try:
        sql("INSERT INTO loose VALUES (1, 'a')")
        fold.fold(ROW_LOG)
        assert Change.objects.get().model == "public.loose"
    finally:
        sql("DROP TABLE loose")


def test_the_row_log_is_found_by_the_stream(logged):
    Supplier.objects.create(name="Acme")
    assert ROW_LOG in wakeup.tables_with_work()
    assert any(r.event_table == ROW_LOG and r.folded == 1 for r in fold.fold_all())
    assert ROW_LOG not in wakeup.tables_with_work()


def test_a_webhook_endpoint_filtered_on_the_model_gets_its_changes(logged, settings):
    settings.AUDIT_STREAM = {"WEBHOOK_ALLOWED_NETWORKS": ["127.0.0.0/8"]}
    endpoint = WebhookEndpoint.objects.create(
        url="http://127.0.0.1:9/hook", filter_models=["testapp.Supplier"]
    )
    supplier = Supplier.objects.create(name="Acme")
    Supplier.objects.filter(pk=supplier.pk).update(rating=1)
    result = fold.fold(ROW_LOG)
    assert result.endpoints == {endpoint.pk}
    assert sorted(WebhookMessage.objects.values_list("event_type", flat=True)) == [
        "testapp.supplier.insert",
        "testapp.supplier.update",
    ]


def test_retention_prunes_the_row_log_once_folded(logged, settings):
    for name in ("a", "b"):
        supplier = Supplier.objects.create(name=name)
        for rating in range(1, 4):
            Supplier.objects.filter(pk=supplier.pk).update(rating=rating)
    settings.AUDIT_STREAM = {"RETENTION": {"row_log": {"keep_last": 2}}}
    assert retention.prune(targets=["row_log"]).rows.get(ROW_LOG, 0) == 0  # nothing folded yet
    fold.fold(ROW_LOG)
    report = retention.prune(targets=["row_log"])
    assert report.rows[ROW_LOG] == 4
    assert sorted(RowLog.objects.values_list("pgh_obj_id", "pgh_label", "new_data__rating")) == sorted(
        [(str(s.pk), "update", r) for s in Supplier.objects.all() for r in (2, 3)]
    )


def test_erasure_removes_the_row_log_of_one_object(logged):
    supplier = Supplier.objects.create(name="Acme")
    other = Supplier.objects.create(name="Other")
    Supplier.objects.filter(pk=supplier.pk).update(rating=1)
    fold.fold(ROW_LOG)
    counts = retention.erase("testapp.Supplier", str(supplier.pk))
    assert counts[ROW_LOG] == 2 and counts["audit_stream_change"] == 2
    assert list(RowLog.objects.values_list("pgh_obj_id", flat=True)) == [str(other.pk)]
