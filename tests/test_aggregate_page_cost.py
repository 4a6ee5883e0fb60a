"""AggregateEvent: a page of one object's long history costs a page of diffs, not its history."""

import contextlib

import pytest
from django.db import connection, transaction

from audit_stream.models import AggregateEvent
from tests.testapp.models import Product

pytestmark = pytest.mark.django_db(transaction=True)

HISTORY = 2_000
PAGE = 50


@pytest.fixture
def long_lived():
    """A product updated HISTORY times (HISTORY + 1 events)."""
    product = Product.objects.create(name="lamp", price=1)
    with connection.cursor() as cursor:
        cursor.execute(
            f"DO $$ BEGIN FOR i IN 1..{HISTORY} LOOP"
            f" UPDATE testapp_product SET stock = stock + 1 WHERE id = {product.pk}; END LOOP; END $$"
        )
    return product


@contextlib.contextmanager
def _diffs_computed():
    """Counts calls of _audit_stream_diff (the diff function) in this block; yields a list of one count."""
    counted = []
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL track_functions = 'all'")
        query = (
            "SELECT coalesce(sum(calls), 0) FROM pg_stat_xact_user_functions"
            " WHERE funcname = '_audit_stream_diff'"
        )
        cursor.execute(query)
        before = cursor.fetchone()[0]
        yield counted
        cursor.execute(query)
        counted.append(cursor.fetchone()[0] - before)


@pytest.mark.parametrize("page", ["first", "last"])
def test_a_page_diffs_only_its_own_rows(long_lived, page):
    """The first and the last page of 2,001 events each compute 50 diffs, and the right ones."""
    start = 0 if page == "first" else HISTORY + 1 - PAGE
    with _diffs_computed() as diffs:
        rows = list(AggregateEvent.objects.target(long_lived)[start : start + PAGE])
    assert diffs == [PAGE]
    expected = [[None, 0] if n == 0 else [n - 1, n] for n in range(start, start + PAGE)]
    assert [r.pgh_diff["stock"] for r in rows] == expected


def test_the_diffs_of_a_page_match_those_of_the_whole_history(long_lived):
    """Page by page or all at once, every event has the same diff."""
    whole = {r.pgh_key: r.pgh_diff for r in AggregateEvent.objects.target(long_lived)}
    paged = {}
    for start in range(0, HISTORY + 1, 500):
        page = AggregateEvent.objects.target(long_lived)[start : start + 500]
        paged |= {r.pgh_key: r.pgh_diff for r in page}
    assert paged == whole
    assert len(whole) == HISTORY + 1
