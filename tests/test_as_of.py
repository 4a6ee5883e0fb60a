"""``audit_stream.as_of``: objects, models and QuerySets as they were at a moment.

The timeline tests commit each step in its own transaction (``transactional_db``):
an event's time is its transaction's start, so steps inside one test transaction
would all share one moment.
"""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.core.paginator import Paginator
from django.db import connection, transaction

import audit_stream
from audit_stream import rowlog
from audit_stream.history import ReadOnlyHistoryError, is_as_of
from tests.testapp.models import Book, Customer, Label, Note, Order, Shelf, Supplier, Tag


def moment():
    """The database's clock now: after every committed step, before the next one starts."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT clock_timestamp()")
        return cursor.fetchone()[0]


def insert_untracked(model, **values):
    """Insert a row with no trigger firing, as if it predated tracking."""
    columns = ", ".join(model._meta.get_field(k).column for k in values)
    marks = ", ".join(["%s"] * len(values))
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL session_replication_role = replica")
        cursor.execute(
            f"INSERT INTO {model._meta.db_table} ({columns}) VALUES ({marks}) RETURNING id",
            list(values.values()),
        )
        return cursor.fetchone()[0]


@pytest.fixture
def timeline(transactional_db):
    """A scripted history of one book and its shelf; returns the moments and the objects."""
    t = {"before": moment()}
    buyer = Customer.objects.create(email="b@example.com", name="Bea")
    shelf = Shelf.objects.create(name="A")
    book = Book.objects.create(code="b1", title="Dune", price=Decimal("10.00"), shelf=shelf, buyer=buyer)
    scifi, classic = Tag.objects.create(name="sci-fi"), Tag.objects.create(name="classic")
    book.tags.add(scifi)
    t["created"] = moment()
    book.price = Decimal("12.00")
    book.save()
    t["repriced"] = moment()
    with transaction.atomic():  # several updates in one transaction: the last one counts
        Book.objects.filter(pk=book.pk).update(price=Decimal("13.00"))
        Book.objects.filter(pk=book.pk).update(title="Dune II", price=Decimal("14.00"))
        book.tags.set([classic])
    t["retitled"] = moment()
    Tag.objects.filter(pk=classic.pk).update(name="classics")
    Shelf.objects.filter(pk=shelf.pk).update(name="A2")
    buyer.name = "Bea Live"
    buyer.save()
    t["shelf_renamed"] = moment()
    pk = book.pk
    book.delete()
    t["deleted"] = moment()
    Book.objects.create(pk=pk, code="b1", title="Dune (2nd ed.)", price=Decimal("20.00"))
    t["recreated"] = moment()
    return t, pk, shelf


@pytest.mark.parametrize(
    ("when", "title", "price"),
    [
        ("created", "Dune", "10.00"),
        ("repriced", "Dune", "12.00"),
        ("retitled", "Dune II", "14.00"),
        ("shelf_renamed", "Dune II", "14.00"),
        ("recreated", "Dune (2nd ed.)", "20.00"),
    ],
)
def test_as_of_an_object_gives_its_values_at_each_moment_of_its_timeline(timeline, when, title, price):
    """At each step of the timeline the object has the values of its latest change before it."""
    t, pk, _ = timeline
    past = audit_stream.as_of(Book(pk=pk), t[when])
    assert (type(past), past.pk, past.code, past.title, past.price) == (Book, pk, "b1", title, Decimal(price))


@pytest.mark.parametrize("when", ["before", "deleted"])
def test_as_of_an_object_raises_does_not_exist_before_its_creation_and_after_its_deletion(timeline, when):
    """Not yet created, or deleted (and not yet re-created): Model.DoesNotExist."""
    t, pk, _ = timeline
    with pytest.raises(Book.DoesNotExist, match="did not exist"):
        audit_stream.as_of(Book(pk=pk), t[when])


def test_as_of_a_model_lists_every_object_that_existed_then_with_its_values(timeline):
    """as_of(Model, when): the objects alive at `when`, each with its values then."""
    t, pk, _ = timeline
    assert list(audit_stream.as_of(Book, t["retitled"]).values_list("pk", "title", "price")) == [
        (pk, "Dune II", Decimal("14.00"))
    ]
    assert audit_stream.as_of(Book, t["deleted"]).count() == 0
    assert list(audit_stream.as_of(Shelf, t["retitled"]).values_list("name", flat=True)) == ["A"]
    assert list(audit_stream.as_of(Shelf, t["deleted"]).values_list("name", flat=True)) == ["A2"]


@pytest.mark.parametrize(
    ("when", "tags"),
    [("created", ["sci-fi"]), ("repriced", ["sci-fi"]), ("retitled", ["classic"]), ("recreated", [])],
)
def test_many_to_many_sets_are_read_as_of_each_moment_of_the_timeline(timeline, when, tags):
    """book.tags of a past book: the set it had then, with the tags' names then."""
    t, pk, _ = timeline
    assert [tag.name for tag in audit_stream.as_of(Book(pk=pk), t[when]).tags.all()] == tags


def test_a_foreign_key_to_a_tracked_model_resolves_as_of_the_same_moment(timeline):
    """book.shelf of a past book is the shelf as it was then, not as it is now."""
    t, pk, _ = timeline
    assert audit_stream.as_of(Book(pk=pk), t["retitled"]).shelf.name == "A"
    assert audit_stream.as_of(Book(pk=pk), t["shelf_renamed"]).shelf.name == "A2"
    assert is_as_of(audit_stream.as_of(Book(pk=pk), t["retitled"]).shelf)


def test_a_foreign_key_to_an_untracked_model_resolves_to_the_live_row(timeline):
    """Customer has no history: the buyer of a past book is the customer as it is now."""
    t, pk, _ = timeline
    assert audit_stream.as_of(Book(pk=pk), t["created"]).buyer.name == "Bea Live"


def test_filtering_across_a_relation_uses_the_related_rows_as_of_the_same_moment(timeline):
    """filter(shelf__name=...) and select_related read the shelf's history too."""
    t, pk, _ = timeline
    assert audit_stream.as_of(Book, t["retitled"]).filter(shelf__name="A").count() == 1
    assert audit_stream.as_of(Book, t["retitled"]).filter(shelf__name="A2").count() == 0
    book = audit_stream.as_of(Book, t["retitled"]).select_related("shelf").get(pk=pk)
    assert book.shelf.name == "A"


@pytest.mark.django_db(transaction=True)
def test_as_of_a_queryset_filters_orders_counts_slices_and_paginates_on_historical_values(
    django_assert_num_queries,
):
    """Filters and ordering see the values at `when`, not today's; one SQL query."""
    for i in range(6):
        Book.objects.create(code=f"c{i}", title=f"T{i}", price=i)
    then = moment()
    Book.objects.update(price=100)  # today every book costs 100
    Book.objects.filter(code="c0").delete()

    past = audit_stream.as_of(Book.objects.filter(price__lt=1000), then)
    with django_assert_num_queries(1):
        assert list(past.filter(price__gt=2).order_by("-price").values_list("code", flat=True)) == [
            "c5",
            "c4",
            "c3",
        ]
    assert past.exclude(price__gt=2).count() == 3
    assert [b.code for b in past.order_by("price")[1:3]] == ["c1", "c2"]
    page = Paginator(past.order_by("code"), 4).page(2)
    assert [b.code for b in page] == ["c4", "c5"]
    assert not Book.objects.filter(price__lt=100).exists()


@pytest.mark.django_db
def test_an_as_of_instance_cannot_be_saved_or_deleted():
    """Saving a past version raises and changes nothing."""
    book = Book.objects.create(code="r1", title="Kept", price=1)
    past = audit_stream.as_of(book, moment())
    past.title = "Changed"
    with pytest.raises(ReadOnlyHistoryError, match="cannot be saved"):
        past.save()
    with pytest.raises(ReadOnlyHistoryError):
        past.delete()
    with pytest.raises(ReadOnlyHistoryError, match="cannot write"):
        audit_stream.as_of(Book, moment()).update(title="x")
    assert Book.objects.get(pk=book.pk).title == "Kept"


@pytest.mark.django_db
def test_an_event_model_that_misses_fields_names_them():
    """Note's history leaves out a field and the object: the error says so."""
    with pytest.raises(ValueError, match=r"testapp.NoteEvent.*has no pgh_obj"):
        audit_stream.as_of(Note, moment())


@pytest.mark.django_db
def test_an_event_model_that_misses_inserts_names_the_missing_event():
    """Label records only renames: as_of says an INSERT event is missing and which to add."""
    with pytest.raises(ValueError, match=r"no event records every INSERT.*Snapshot\(\)"):
        audit_stream.as_of(Label, moment())


@pytest.mark.django_db
def test_an_untracked_model_is_refused_with_what_to_do():
    """Customer has no history at all."""
    with pytest.raises(ValueError, match="track it with"):
        audit_stream.as_of(Customer, moment())


@pytest.mark.django_db
def test_separate_insert_update_and_delete_events_are_enough():
    """OrderEvent records AfterInsert, AfterUpdate and BeforeDelete (and BeforeUpdate, ignored)."""
    order = Order.objects.create(customer=Customer.objects.create(email="o@example.com", name="O"))
    order.status = "paid"
    order.save()
    assert audit_stream.as_of(order, moment()).status == "paid"


@pytest.mark.django_db
def test_an_object_older_than_its_tracking_raises_and_names_backfill():
    """A row with no event at all: as_of says it predates tracking and how to backfill it."""
    pk = insert_untracked(Book, code="old", title="Old", price=1)
    with pytest.raises(ValueError, match=r"no event.*backfill_history testapp.Book"):
        audit_stream.as_of(Book(pk=pk), moment())
    assert not audit_stream.as_of(Book, moment()).filter(pk=pk).exists()


@pytest.fixture
def logged_suppliers(transactional_db):
    """Supplier logged by initlogging (no @track); logging removed afterwards."""
    from django.core.management import call_command

    call_command("initlogging", stdout=open("/dev/null", "w"))  # noqa: SIM115
    yield
    rowlog.drop_logging()


def test_a_table_logged_by_initlogging_is_rebuilt_as_revert_does(logged_suppliers):
    """Row-log states at each moment, including a row older than logging."""
    insert_untracked(Supplier, name="old", rating=1, active=True)  # older than logging
    t0 = moment()
    acme = Supplier.objects.create(name="acme", rating=Decimal("1.500"))
    t1 = moment()
    acme.rating = Decimal("2.250")
    acme.save()
    Supplier.objects.filter(name="old").update(active=False)
    t2 = moment()
    acme_pk = acme.pk
    acme.delete()
    t3 = moment()

    def state(when):
        return sorted(audit_stream.as_of(Supplier, when).values_list("name", "rating", "active"))

    assert state(t0) == [("old", Decimal("1.000"), True)]
    assert state(t1) == [("acme", Decimal("1.500"), True), ("old", Decimal("1.000"), True)]
    assert state(t2) == [("acme", Decimal("2.250"), True), ("old", Decimal("1.000"), False)]
    assert state(t3) == [("old", Decimal("1.000"), False)]
    assert audit_stream.as_of(Supplier(pk=acme_pk), t1).rating == Decimal("1.500")
    with pytest.raises(Supplier.DoesNotExist):
        audit_stream.as_of(Supplier(pk=acme_pk), t3)
    # The same state revert rebuilds for each entry (rowlog.recorded_state).
    from audit_stream.models import RowLog

    for entry in RowLog.objects.filter(logged_table="public.testapp_supplier", pgh_label="update"):
        when = entry.pgh_created_at
        past = audit_stream.as_of(Supplier(pk=int(entry.pgh_obj_id)), when)
        assert str(past.rating) == str(rowlog.recorded_state(entry)["rating"])
