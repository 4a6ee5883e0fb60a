"""A checkpoint restored onto another cluster is detected, recovered exactly, and guards retention.

A restore is simulated here by what it leaves behind: a checkpoint whose
snapshot is ahead of every transaction of this cluster (the old cluster had
issued more), or that names another cluster's system identifier. The real
thing (pg_dump into a fresh cluster) is in tests/faults/test_restore.py.
"""

from __future__ import annotations

import psycopg
import pytest
from django.db import connection

from audit_stream import retention
from audit_stream.models import Change, Checkpoint
from audit_stream.stream import checkpoint, fold, wakeup
from tests.testapp.models import Product, ProductEvent

pytestmark = pytest.mark.django_db(transaction=True)

PRODUCTS = "testapp_productevent"
AHEAD = "4000000000:4000000000:"  # the snapshot of a cluster that issued far more transactions


def _restored(**checkpoint):
    """Three events folded, two not, then the checkpoint as a restore onto another cluster leaves it."""
    for i in range(3):
        Product.objects.create(name=f"folded{i}")
    fold.fold(PRODUCTS)
    for i in range(2):
        Product.objects.create(name=f"unfolded{i}")
    Checkpoint.objects.filter(event_table=PRODUCTS).update(**checkpoint)


def _folded_once():
    events = sorted(ProductEvent.objects.values_list("pgh_id", flat=True))
    changes = sorted(Change.objects.filter(event_table=PRODUCTS).values_list("event_id", flat=True))
    return changes == events


@pytest.mark.parametrize(
    "checkpoint", [{"snapshot": AHEAD}, {"cluster": "1234567890"}], ids=["ahead", "other-cluster"]
)
def test_a_restored_checkpoint_is_recovered_and_every_event_folded_once(checkpoint):
    """The fold recovers it first: the two unfolded events are folded, the three folded ones are not."""
    _restored(**checkpoint)
    result = fold.fold(PRODUCTS)
    assert result.folded == 2
    assert _folded_once()


def test_after_recovery_the_fold_goes_on_normally():
    """Events written after the recovery are folded once, and the checkpoint is this cluster's again."""
    _restored(snapshot=AHEAD)
    fold.fold(PRODUCTS)
    Product.objects.create(name="later")
    assert fold.fold(PRODUCTS).folded == 1
    assert _folded_once()
    assert not wakeup.has_work(PRODUCTS)


def test_a_restored_checkpoint_wakes_the_fold():
    """The listener's poll sees work, although no event is newer than the restored snapshot."""
    _restored(snapshot=AHEAD)
    assert wakeup.has_work(PRODUCTS)


def test_retention_refuses_to_prune_a_table_whose_checkpoint_is_restored(settings):
    """Until the fold recovers it, unfolded events look folded: nothing is pruned, and the report says why."""
    _restored(snapshot=AHEAD)
    settings.AUDIT_STREAM = {"RETENTION": {"default": {"keep_last": 1}}}
    report = retention.prune(targets=["testapp.ProductEvent"])
    assert ProductEvent.objects.count() == 5
    assert "restored from another cluster" in report.errors[0]


def test_retention_prunes_again_once_the_fold_has_recovered(settings):
    """After the recovery, the folded events are pruned by their policy as before."""
    _restored(snapshot=AHEAD)
    fold.fold(PRODUCTS)
    settings.AUDIT_STREAM = {"RETENTION": {"default": {"keep_last": 1}}}
    Product.objects.filter(name="folded0").update(stock=1)
    fold.fold(PRODUCTS)
    report = retention.prune(targets=["testapp.ProductEvent"])
    assert (report.errors, report.rows[PRODUCTS]) == ([], 1)


def test_an_event_committed_during_the_recovery_is_folded_once_by_the_next_fold(monkeypatch):
    """The recovery reads one snapshot: a write that commits half-way is left to the next fold, not lost."""
    _restored(snapshot=AHEAD)
    original = checkpoint.recovered

    def commit_a_write_first(*args, **kwargs):
        db = connection.settings_dict
        with psycopg.connect(dbname=db["NAME"], host=db["HOST"], port=db["PORT"], user=db["USER"]) as other:
            other.execute("INSERT INTO testapp_product (name, price, stock, updated_at)"
                          " VALUES ('meanwhile', 1, 0, now())")  # fmt: skip
        return original(*args, **kwargs)

    monkeypatch.setattr(checkpoint, "recovered", commit_a_write_first)
    assert fold.fold(PRODUCTS).folded == 2 + 1
    assert _folded_once()


def _restored_events(n):
    """Event rows as a restore from a cluster far ahead leaves them: old transaction ids (setup only)."""
    with connection.cursor() as cursor:
        cursor.execute("BEGIN")
        cursor.execute("SET LOCAL session_replication_role = replica")
        for i in range(n):
            cursor.execute(
                "INSERT INTO testapp_productevent"
                " (pgh_label, pgh_xid, pgh_obj_id, id, name, price, stock, updated_at)"
                " VALUES ('snapshot', %s, %s, %s, %s, 0, 0, now())",
                [4_000_000_000 + i, 1000 + i, 1000 + i, f"restored{i}"],
            )
        cursor.execute("COMMIT")


def test_events_restored_into_a_table_never_folded_are_folded_once():
    """No checkpoint came with them: their transaction ids, ahead of this cluster's, call for a recovery."""
    _restored_events(2)
    Product.objects.create(name="here")
    assert fold.fold(PRODUCTS, max_seconds=5).folded == 3
    Product.objects.create(name="later")
    assert fold.fold(PRODUCTS, max_seconds=5).folded == 1
    assert _folded_once()
    assert not wakeup.has_work(PRODUCTS)
