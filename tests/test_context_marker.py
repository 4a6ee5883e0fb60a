"""The session marker that lets a session skip re-attaching a context it attached in the last 10 minutes."""

from __future__ import annotations

import pytest
from django.db import connection, transaction

import audit_stream
from audit_stream import retention
from audit_stream.models import Context
from tests.testapp.models import Product, ProductEvent

pytestmark = pytest.mark.django_db(transaction=True)


def attach_calls(sql):
    """Calls of the attach function: contexts that already existed (a new one is inserted by the trigger)."""
    sql("SELECT pg_stat_force_next_flush()")
    sql("SELECT pg_stat_clear_snapshot()")
    rows = sql("SELECT calls FROM pg_stat_user_functions WHERE funcname = '_audit_stream_attach_context'")
    return rows[0][0] if rows else 0


@pytest.fixture
def counted(sql):
    sql("SET track_functions = 'all'")
    sql("SELECT pg_stat_reset()")
    yield
    sql("SET track_functions = 'none'")


def test_a_session_attaches_a_context_once_for_many_transactions(counted, sql):
    with audit_stream.context(user=1):
        for i in range(5):
            Product.objects.create(name=f"p{i}")  # autocommit: five transactions
    assert attach_calls(sql) == 0  # inserted by the first; the marker spares the others even a probe
    assert ProductEvent.objects.filter(pgh_context__isnull=False).count() == 5


def test_new_metadata_is_attached_again(counted, sql):
    with audit_stream.context(user=1) as state:
        Product.objects.create(name="a")
        audit_stream.context(reason="more")
        Product.objects.create(name="b")
    assert attach_calls(sql) == 1  # the new metadata
    assert Context.objects.get(pk=state.id).metadata == {"user": 1, "reason": "more"}


def test_a_rolled_back_attach_leaves_no_marker(sql):
    with audit_stream.context(user=1) as state:
        with pytest.raises(RuntimeError), transaction.atomic():
            Product.objects.create(name="a")
            raise RuntimeError
        assert not Context.objects.filter(pk=state.id).exists()
        Product.objects.create(name="b")
    assert Context.objects.filter(pk=state.id).exists()
    assert ProductEvent.objects.get().pgh_context_id == state.id


def test_an_expired_marker_attaches_again_and_refreshes_updated_at(sql):
    with audit_stream.context(user=1) as state:
        Product.objects.create(name="a")
        sql(
            "UPDATE audit_stream_context SET updated_at = now() - interval '2 hours' WHERE id = %s",
            [state.id],
        )
        marker = sql("SELECT current_setting('audit_stream.attached')")[0][0]
        sql("SELECT set_config('audit_stream.attached', %s, false)", [marker[:36] + " 1"])  # long expired
        state.attached.clear()  # and the client's trust too (see audit_stream.context._inject)
        Product.objects.create(name="b")
    refreshed = sql(
        "SELECT now() - updated_at < interval '1 minute' FROM audit_stream_context WHERE id = %s", [state.id]
    )
    assert refreshed == [(True,)]


def test_retention_never_prunes_a_context_a_session_holds_a_marker_for(sql):
    """Retention prunes unreferenced contexts, but never one a session's marker vouches for."""
    with audit_stream.context(user="old"):
        Product.objects.create(name="old")
    with audit_stream.context(user=1) as state:
        Product.objects.create(name="a")
        # Neither context has an event any more; the first one is also old.
        sql("TRUNCATE testapp_productevent")
        sql(
            "UPDATE audit_stream_context SET updated_at = now() - interval '2 hours' WHERE id <> %s",
            [state.id],
        )
        report = retention.prune()  # every target: unreferenced contexts included
        # The old one went: this prune does delete contexts ...
        assert report.rows["audit_stream_context"] == 1
        assert list(Context.objects.values_list("id", flat=True)) == [state.id]
        # ... but not the one this session attached less than 10 minutes ago (its marker says it exists).
        Product.objects.create(name="b")  # skips re-attaching: the row must still be there
    assert ProductEvent.objects.get(name="b").pgh_context_id == state.id
    assert Context.objects.filter(pk=state.id).exists()


def test_the_marker_is_per_context(counted, sql):
    for user in (1, 2):
        with audit_stream.context(user=user):
            Product.objects.create(name=f"p{user}")
    assert attach_calls(sql) == 0  # two new contexts, each inserted by its trigger
    assert Context.objects.count() == 2
    assert connection.vendor == "postgresql"
