"""Event tables are append-only; only retention may delete, deliberately."""

import json
import os
import subprocess
import sys

import pytest
from django.db import DatabaseError, connection, transaction

from audit_stream import retention
from tests.testapp.models import Product, ProductEvent

pytestmark = pytest.mark.django_db


@pytest.fixture
def product_event():
    Product.objects.create(name="kept", price=1)
    return ProductEvent.objects.get()


def test_update_of_history_is_refused(product_event):
    with pytest.raises(DatabaseError, match="history is append-only"), transaction.atomic():
        ProductEvent.objects.update(name="forged")
    assert ProductEvent.objects.get().name == "kept"


def test_delete_of_history_is_refused(product_event):
    with pytest.raises(DatabaseError, match="history is append-only"), transaction.atomic():
        ProductEvent.objects.all().delete()
    assert ProductEvent.objects.count() == 1


def test_raw_delete_of_history_is_refused(product_event, sql):
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        sql("DELETE FROM testapp_productevent")
    assert ProductEvent.objects.count() == 1


def test_retention_can_delete_deliberately(product_event):
    with transaction.atomic(), retention.allow_prune():
        ProductEvent.objects.all().delete()
    assert ProductEvent.objects.count() == 0


def test_the_retention_bypass_ends_with_its_transaction(product_event):
    with transaction.atomic(), retention.allow_prune():
        pass
    with pytest.raises(DatabaseError), transaction.atomic():
        ProductEvent.objects.all().delete()


def test_retention_bypass_never_allows_update(product_event):
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic(), retention.allow_prune():
        ProductEvent.objects.update(name="forged")


@pytest.mark.django_db(transaction=True)
def test_retention_bypass_needs_a_transaction():
    assert not connection.in_atomic_block
    with pytest.raises(RuntimeError, match=r"inside transaction\.atomic"), retention.allow_prune():
        pass


def test_turning_append_only_off_writes_no_migration_into_audit_streams_own_app():
    """APPEND_ONLY = False changes your apps' migrations, never the installed package's."""
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "AUDIT_STREAM_SETTINGS": json.dumps({"APPEND_ONLY": False}),
    }

    def makemigrations(app):
        return subprocess.run(
            [sys.executable, "-m", "django", "makemigrations", app, "--check", "--dry-run"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    own = makemigrations("audit_stream")
    assert own.returncode == 0, own.stdout + own.stderr
    assert "No changes detected" in own.stdout
    yours = makemigrations("testapp")
    assert yours.returncode == 1
    assert "Remove trigger append_only from model productevent" in yours.stdout
