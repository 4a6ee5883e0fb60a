"""Transactions in the feed: each change names its transaction, payloads say how many changes the
transaction made across tables, and Change.objects.for_transaction() gives them in statement order
(the ordering promises of docs/feed.md, under concurrent writers and a late commit)."""

import threading

import psycopg
import pytest
from django.db import connection, transaction

from audit_stream.models import Change
from audit_stream.stream import fold
from audit_stream.webhooks.models import WebhookEndpoint, WebhookMessage
from tests.testapp.models import Label, Note, Product

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def endpoint():
    return WebhookEndpoint.objects.create(url="https://93.184.215.14/hook")  # public, never called


def _connect():
    return psycopg.connect(**connection.get_connection_params())


def _xid(conn=None) -> int:
    if conn is not None:
        return int(conn.execute("SELECT pg_current_xact_id()::text").fetchone()[0])
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_current_xact_id()::text")
        return int(cursor.fetchone()[0])


def _write_across_tables(conn, name: str) -> int:
    """In one transaction of ``conn``: a product, a note, the product's price; returns the xid."""
    product_id = conn.execute(
        "INSERT INTO testapp_product (name, price, stock, updated_at) VALUES (%s, 1, 0, now()) RETURNING id",
        [name],
    ).fetchone()[0]
    conn.execute("INSERT INTO testapp_note (title, note) VALUES (%s, '')", [name])
    conn.execute("UPDATE testapp_product SET price = 2 WHERE id = %s", [product_id])
    return _xid(conn)


# What _write_across_tables records, in order. The UPDATE fires two triggers, each its own
# command: PostgreSQL fires a statement's triggers in name order (price_changed_..., snapshot_...).
_STATEMENTS = [
    ("testapp.product", "snapshot"),
    ("testapp.note", "snapshot"),
    ("testapp.product", "price_changed"),
    ("testapp.product", "snapshot"),
]


def _statements(changes) -> list[tuple]:
    """(model, label) of changes, checking that each was written by a later command than the one before."""
    commands = [change.command_id for change in changes]
    assert commands == sorted(set(commands)), "one command per trigger, in order"
    return [(change.model, change.label) for change in changes]


def _transactions_of(change_ids) -> list[dict]:
    return [m.payload["data"]["transaction"] for m in WebhookMessage.objects.filter(change_id__in=change_ids)]


def test_a_change_carries_its_transaction_id():
    """Change.transaction_id is the event's pgh_xid."""
    with transaction.atomic():
        Product.objects.create(name="lamp")
        xid = _xid()
    fold.fold_all()
    assert list(Change.objects.values_list("transaction_id", flat=True)) == [xid]


def test_for_transaction_gives_the_changes_across_tables_in_statement_order():
    """Tables are folded one after another, yet a transaction reads back in the order it wrote."""
    with transaction.atomic():
        product = Product.objects.create(name="lamp")
        Note.objects.create(title="a note")
        Product.objects.filter(pk=product.pk).update(price=5)
        Label.objects.create(code="x", text="old")
        Label.objects.filter(pk="x").update(text="new")
        xid = _xid()
    Product.objects.create(name="another transaction")
    fold.fold_all()
    assert _statements(Change.objects.for_transaction(xid)) == [*_STATEMENTS, ("testapp.label", "renamed")]


def test_every_payload_says_how_many_changes_its_transaction_made_across_tables(endpoint):
    """transaction.changes counts every tracked table, whichever table the change is from."""
    with transaction.atomic():
        product = Product.objects.create(name="lamp")
        Note.objects.create(title="a note")
        Product.objects.filter(pk=product.pk).update(price=5)
        xid = _xid()
    Product.objects.create(name="alone")
    fold.fold_all()
    ours = Change.objects.for_transaction(xid).values_list("id", flat=True)
    assert {t["id"]: t["changes"] for t in _transactions_of(ours)} == {xid: 4}
    alone = Change.objects.exclude(transaction_id=xid).values_list("id", flat=True)
    assert [t["changes"] for t in _transactions_of(alone)] == [1]


def test_the_count_is_whole_before_the_other_tables_are_folded(endpoint):
    """Folding one table first already gives the full count: a consumer knows what is still to come."""
    with transaction.atomic():
        Product.objects.create(name="lamp")
        Note.objects.create(title="a note")
        xid = _xid()
    fold.fold("testapp_noteevent")
    (message,) = WebhookMessage.objects.all()
    assert message.payload["data"]["transaction"]["changes"] == 2
    assert Change.objects.for_transaction(xid).count() == 1  # the product's table is not folded yet


def test_a_late_committing_transaction_arrives_whole_and_after_what_was_folded_before(endpoint):
    """Its events have lower ids than events folded before it commits; it still arrives complete."""
    late = _connect()
    try:
        late_xid = _write_across_tables(late, "late")  # low pgh_ids, uncommitted
        early = _connect()
        early_xid = _write_across_tables(early, "early")
        early.commit()
        early.close()
        fold.fold_all()
        assert set(Change.objects.values_list("transaction_id", flat=True)) == {early_xid}
        folded_before = Change.objects.order_by("-id").values_list("id", flat=True).first()

        late.commit()
        fold.fold_all()
        changes = list(Change.objects.for_transaction(late_xid))
        assert _statements(changes) == _STATEMENTS
        assert all(c.id > folded_before for c in changes)  # after everything folded before, in the feed
        assert {t["changes"] for t in _transactions_of([c.id for c in changes])} == {4}
    finally:
        late.close()


def test_concurrent_writers_to_several_tables_each_read_back_whole_and_in_order(endpoint):
    """Writers interleave transactions over three event tables while the fold runs."""
    xids: list[int] = []
    errors: list[BaseException] = []

    def writer(number: int) -> None:
        try:
            with _connect() as conn:
                for i in range(12):
                    xids.append(_write_across_tables(conn, f"w{number}-{i}"))
                    conn.commit()
        except BaseException as exc:  # reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(3)]
    for thread in threads:
        thread.start()
    while any(thread.is_alive() for thread in threads):
        fold.fold_all(max_seconds=1)
    for thread in threads:
        thread.join()
    fold.fold_all()

    assert errors == []
    assert len(xids) == 36
    for xid in xids:
        changes = list(Change.objects.for_transaction(xid))
        assert _statements(changes) == _STATEMENTS
        assert {t["changes"] for t in _transactions_of([c.id for c in changes])} == {4}
    # Per object, the feed's order is the order of the writes.
    for product in Product.objects.all():
        diffs = [c.diff.get("price") for c in Change.objects.for_object(product).filter(label="snapshot")]
        assert diffs[1:] == [[1, 2]]
