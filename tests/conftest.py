import pytest
from django.db import connection


@pytest.fixture
def events():
    """Rows of an event table as (label, values...) tuples, oldest first."""

    def _events(model, *fields):
        return list(model.objects.order_by("pgh_id").values_list("pgh_label", *fields))

    return _events


@pytest.fixture
def sql():
    """Run raw SQL on the default connection and return the rows (if any)."""

    def _sql(statement, params=None):
        with connection.cursor() as cursor:
            cursor.execute(statement, params)
            return cursor.fetchall() if cursor.description else None

    return _sql
