import pytest
from django.conf import settings as django_settings
from django.core.signals import setting_changed
from django.db import connection
from django.dispatch import receiver

#: FOLD_LINGER of this test process's in-process folds, unless a test sets its own.
TEST_FOLD_LINGER = 0


def pytest_configure(config):
    """In-process folds (``fold()``, ``fold_all()``) do not linger after catching up.

    ``FOLD_LINGER`` (0.1 s by default) keeps a worker's fold task looking for new
    events before it re-arms NOTIFY. ``fold_all()`` lingers on each of the ~20
    event tables in turn, so every call waited ~2 s for writes no test makes; a
    caught-up fold that does not linger still re-arms and looks once more, so it
    folds exactly the same committed events. Tests about lingering set
    ``FOLD_LINGER`` themselves; worker and listener processes get their settings
    from ``tests.procs.child_env`` and keep the default.
    """
    django_settings.AUDIT_STREAM.setdefault("FOLD_LINGER", TEST_FOLD_LINGER)


@receiver(setting_changed)
def _no_fold_linger_by_default(*, setting, value, enter, **kwargs):
    """A test replacing ``settings.AUDIT_STREAM`` wholesale gets ``FOLD_LINGER`` 0 unless it names one
    (a copy: the test's own dict, which it may pass to a worker, is left as it is)."""
    if setting == "AUDIT_STREAM" and enter and isinstance(value, dict) and "FOLD_LINGER" not in value:
        django_settings.AUDIT_STREAM = {**value, "FOLD_LINGER": TEST_FOLD_LINGER}


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
