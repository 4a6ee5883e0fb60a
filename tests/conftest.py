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


@pytest.fixture(autouse=True)
def _partitions_ahead(request, django_db_blocker):
    """On the partitioned layout (AUDIT_STREAM_TEST_PARTITIONED=1), partitions are created ahead before
    each database test, as beat does, so that events fill range partitions and not the default one."""
    from django.conf import settings

    if not settings.PARTITIONED or request.node.get_closest_marker("django_db") is None:
        return
    from audit_stream import partitions

    with django_db_blocker.unblock():
        for layout in _declared_layouts():
            partitions.ensure(layout)


_LAYOUTS: list = []


def _declared_layouts() -> list:
    """The session's declared layouts (a test may replace AUDIT_STREAM: read the settings module's)."""
    if not _LAYOUTS:
        from django.test import override_settings

        from audit_stream import partitions
        from tests import settings as session_settings

        with override_settings(AUDIT_STREAM=session_settings.AUDIT_STREAM):
            _LAYOUTS.extend(partitions.declared().values())
    return _LAYOUTS
