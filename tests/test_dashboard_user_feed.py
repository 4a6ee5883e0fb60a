"""The dashboard's change feed filtered by a user: every change of the user's contexts, newest first,
for the price of a page, however many changes of others were folded after them.

Each of the user's contexts is one range of the ``(context, id)`` index
(migration 0037); the page merges the newest changes of the contexts whose
newest changes are newest (audit_stream.dashboard.feed). What a page costs is
read from PostgreSQL's per-transaction counters (pg_stat_xact_user_tables) of
the change feed and its partitions (AUDIT_STREAM_TEST_PARTITIONED=1).
"""

import contextlib

import pytest
from django.db import connection, transaction

import audit_stream
from audit_stream.dashboard import paging, queries
from audit_stream.models import Change, Context
from audit_stream.stream import fold
from tests.testapp.models import Product

pytestmark = pytest.mark.django_db(transaction=True)

CHANGES = "audit_stream_change"


def _insert(count: int, prefix: str) -> None:
    """``count`` products in one statement (its statement trigger writes one event each)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO testapp_product (name, price, stock, updated_at)"
            " SELECT %s || g, g, 0, now() FROM generate_series(1, %s) AS g",
            [prefix, count],
        )


def _counters() -> tuple[int, int]:
    """Rows of the change feed (and its partitions) read sequentially, and fetched through indexes."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT coalesce(sum(seq_tup_read), 0), coalesce(sum(idx_tup_fetch), 0)"
            " FROM pg_stat_xact_user_tables WHERE relid = %s::regclass"
            " OR relid IN (SELECT inhrelid FROM pg_inherits WHERE inhparent = %s::regclass)",
            [CHANGES, CHANGES],
        )
        return cursor.fetchone()


@contextlib.contextmanager
def _rows_read():
    """Yields a list that ends up as [rows read sequentially, rows fetched by index scans].

    The counters are read before and after in one transaction: they are not
    flushed inside one.
    """
    counted = []
    with transaction.atomic():
        before = _counters()
        yield counted
        after = _counters()
    counted.extend([after[0] - before[0], after[1] - before[1]])


def _user_changes(user_pk, **filters) -> list[int]:
    """The ids of the user's changes, newest first, by a plain query (the expectation)."""
    contexts = Context.objects.filter(metadata__user=user_pk).values("id")
    return list(
        Change.objects.filter(context_id__in=contexts, **filters).order_by("-id").values_list("id", flat=True)
    )


def _all_pages(**criteria) -> list[int]:
    """Every change the feed lists for ``criteria``, following the older-page cursor to the end."""
    seen, before = [], None
    while True:
        page = queries.changes(before=before, **criteria)
        seen += [change.id for change in page.items]
        if page.older is None:
            return seen
        before = int(page.older)


def test_a_users_changes_are_every_change_of_their_contexts_newest_first(monkeypatch, django_user_model):
    """Contexts written between other users' ones, single and multi-statement, one without changes."""
    ada, bob = (django_user_model.objects.create_user(name) for name in ("ada", "bob"))
    for round_ in range(4):
        with audit_stream.context(user=ada.pk, round=round_):
            _insert(3, f"a{round_}-")
            Product.objects.filter(name__startswith=f"a{round_}-").update(price=99)
        with audit_stream.context(user=bob.pk):
            _insert(5, f"b{round_}-")
    Context.objects.create(metadata={"user": ada.pk})  # a context whose writes all rolled back
    fold.fold_all()
    monkeypatch.setattr(paging, "PAGE_SIZE", 4)

    expected = _user_changes(ada.pk)
    assert len(expected) == 4 * (3 + 3 + 3)  # per round: 3 inserts, 3 updates and their 3 price changes
    assert _all_pages(user=ada.pk) == expected
    assert _all_pages(user=bob.pk) == _user_changes(bob.pk)


def test_the_user_filter_combines_with_the_other_filters(monkeypatch, django_user_model):
    ada, bob = (django_user_model.objects.create_user(name) for name in ("ada", "bob"))
    for round_ in range(3):
        with audit_stream.context(user=ada.pk):
            _insert(2, f"a{round_}-")
            Product.objects.filter(name__startswith=f"a{round_}-").update(price=7)
        with audit_stream.context(user=bob.pk):
            _insert(2, f"b{round_}-")
            Product.objects.filter(name__startswith=f"b{round_}-").update(price=7)
    fold.fold_all()
    monkeypatch.setattr(paging, "PAGE_SIZE", 2)
    one = Product.objects.get(name="a1-2")

    assert _all_pages(user=ada.pk, label="price_changed") == _user_changes(ada.pk, label="price_changed")
    assert len(_user_changes(ada.pk, label="price_changed")) == 6
    assert _all_pages(user=ada.pk, model="testapp.product", object_id=str(one.pk)) == _user_changes(
        ada.pk, model="testapp.product", object_id=str(one.pk)
    )
    assert _all_pages(user=bob.pk, object_id=str(one.pk)) == []
    assert _all_pages(user=ada.pk, visible=["testapp.order"]) == []
    assert _all_pages(user=ada.pk, visible=[]) == []
    assert _all_pages(user="nobody") == []


def test_the_user_filter_reads_about_a_page_whatever_was_folded_after_the_users_changes(django_user_model):
    """Before, the page walked the feed back from its newest change: 3,000 newer changes (or, through the
    context index, every change of the user's, 800, sorted)."""
    ada, bob = (django_user_model.objects.create_user(name) for name in ("ada", "bob"))
    for part in range(2):
        with audit_stream.context(user=ada.pk):
            _insert(400, f"a{part}-")
    for part in range(30):
        with audit_stream.context(user=bob.pk):
            _insert(100, f"b{part}-")
    fold.fold_all()
    expected = _user_changes(ada.pk)[: paging.PAGE_SIZE]

    with _rows_read() as read:
        page = queries.changes(user=ada.pk)
    assert [change.id for change in page.items] == expected
    seq_read, fetched = read
    # Each context's newest change, the page's changes read in order from the two
    # contexts (51 and 50), then the page's rows again by id with their diffs.
    assert seq_read + fetched <= 3 * paging.PAGE_SIZE + 10, read

    with _rows_read() as read:
        older = queries.changes(user=ada.pk, before=int(page.older))
    assert [change.id for change in older.items] == _user_changes(ada.pk)[
        paging.PAGE_SIZE : 2 * paging.PAGE_SIZE
    ]
    assert sum(read) <= 3 * paging.PAGE_SIZE + 10, read


def test_every_partition_of_the_change_feed_has_the_context_index():
    """The user filter's index is on the feed, and on each of its partitions when it is partitioned."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.relname, EXISTS (SELECT 1 FROM pg_index AS x WHERE x.indrelid = c.oid"
            "                          AND pg_get_indexdef(x.indexrelid) LIKE '%%(context_id, id)')"
            " FROM pg_class AS c"
            " WHERE c.oid = %s::regclass"
            "    OR c.oid IN (SELECT inhrelid FROM pg_inherits WHERE inhparent = %s::regclass)",
            [CHANGES, CHANGES],
        )
        found = dict(cursor.fetchall())
    assert found and all(found.values()), found
