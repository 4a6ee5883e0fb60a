"""Pruning the change feed by age keeps what the fold needs: each object's latest change."""

from __future__ import annotations

import io

import pytest
from django.core.management import call_command
from django.db import connection

from audit_stream import retention
from audit_stream.models import Change
from audit_stream.stream import fold
from tests.testapp.models import Customer, Note, Product, Supplier

pytestmark = pytest.mark.django_db(transaction=True)

AGE = {"RETENTION": {"changes": {"max_age": "7d"}}}


def _age_the_feed():
    """Make every change look two weeks old (setup only: replica mode skips the append-only trigger)."""
    with connection.cursor() as cursor:
        cursor.execute("BEGIN")
        cursor.execute("SET LOCAL session_replication_role = replica")
        cursor.execute("UPDATE audit_stream_change SET created_at = created_at - interval '14 days'")
        cursor.execute("COMMIT")


def test_pruning_changes_by_age_keeps_the_latest_change_of_each_object(settings):
    """The older change goes, the latest stays."""
    settings.AUDIT_STREAM = AGE
    product = Product.objects.create(name="lamp")
    Product.objects.filter(pk=product.pk).update(stock=1)
    fold.fold("testapp_productevent")
    _age_the_feed()
    retention.prune(targets=["changes"])
    assert list(Change.objects.for_object(product).values_list("diff__stock", flat=True)) == [[0, 1]]


def test_after_pruning_by_age_the_next_diff_holds_only_what_changed(settings):
    """The fold diffs the next event against the kept change, not against nothing."""
    settings.AUDIT_STREAM = AGE
    product = Product.objects.create(name="lamp")
    fold.fold("testapp_productevent")
    _age_the_feed()
    retention.prune(targets=["changes"])
    Product.objects.filter(pk=product.pk).update(stock=2)
    fold.fold("testapp_productevent")
    assert Change.objects.for_object(product).last().diff == {"stock": [0, 2]}


def test_changes_without_an_object_keep_their_newest_of_each_table_and_model(settings):
    """Object-less changes (an event model without pgh_obj, schema changes) of one table and model are one
    object: its newest change stays (the partition drop keeps the same: tests/test_change_partitions.py)."""
    settings.AUDIT_STREAM = AGE
    for title in ("a", "b", "c"):
        Note.objects.create(title=title)
    fold.fold("testapp_noteevent")
    _age_the_feed()
    newest = Change.objects.filter(object_id=None).order_by("event_id").last().id
    assert retention.prune(targets=["changes"]).rows["audit_stream_change"] == 2
    assert list(Change.objects.filter(object_id=None).values_list("id", flat=True)) == [newest]


@pytest.fixture
def logged():
    call_command("initlogging", stdout=io.StringIO())
    yield
    call_command("droplogging", stdout=io.StringIO())


def test_after_pruning_by_age_the_next_row_log_snapshot_is_the_whole_row(logged, settings):
    """The row log's changed columns are patched onto the kept change's snapshot."""
    settings.AUDIT_STREAM = AGE
    supplier = Supplier.objects.create(name="Acme")
    fold.fold("audit_stream_row_log")
    _age_the_feed()
    retention.prune(targets=["changes"])
    Supplier.objects.filter(pk=supplier.pk).update(rating=3)
    fold.fold("audit_stream_row_log")
    snapshot = Change.objects.for_object(supplier).last().snapshot
    assert (snapshot["name"], snapshot["rating"]) == ("Acme", 3)


def test_row_log_objects_of_two_tables_with_the_same_key_each_keep_their_latest_change(logged, settings):
    """An object of the row log is a row of one table: the same key in another table is another object."""
    settings.AUDIT_STREAM = {"RETENTION": {"changes": {"keep_last": 1}}}
    customer = Customer.objects.create(email="a@example.com", name="A")
    Supplier.objects.create(id=customer.pk, name="Acme")
    fold.fold("audit_stream_row_log")
    retention.prune(targets=["changes"])
    assert sorted(Change.objects.values_list("model", flat=True)) == ["testapp.customer", "testapp.supplier"]
