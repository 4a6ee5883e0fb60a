"""Many-to-many history: ``track(m2m_fields=["tags"])`` records the set after every write path."""

from __future__ import annotations

import pytest
from django.db import connection

import audit_stream
from audit_stream.models import AggregateEvent, Change, WebhookEndpoint, WebhookMessage
from audit_stream.stream import fold
from tests.testapp.models import Book, BookTagsEvent, Loan, Reader, ReaderBooksEvent, Tag

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def tags():
    return {name: Tag.objects.create(name=name) for name in ("red", "blue", "green")}


@pytest.fixture
def book():
    return Book.objects.create(code="m1", title="Tagged")


def sets(book):
    """The recorded sets of the book's tags, oldest first, as tag names."""
    names = dict(Tag.objects.values_list("pk", "name"))
    return [
        sorted(names.get(pk, pk) for pk in members)
        for members in BookTagsEvent.objects.filter(pgh_obj=book)
        .order_by("pgh_id")
        .values_list("tags", flat=True)
    ]


def moment():
    with connection.cursor() as cursor:
        cursor.execute("SELECT clock_timestamp()")
        return cursor.fetchone()[0]


def test_add_remove_clear_and_set_each_record_the_set_after_them(book, tags):
    """Every manager method is a write to the through table: the event holds the whole set after it."""
    book.tags.add(tags["red"], tags["blue"])
    book.tags.remove(tags["red"])
    book.tags.set([tags["green"], tags["blue"]])
    book.tags.clear()
    assert sets(book) == [["blue", "red"], ["blue"], ["blue", "green"], []]


def test_set_that_removes_and_adds_records_each_statement(book, tags):
    """set() removes then adds: two statements, two events (the intermediate set included)."""
    book.tags.add(tags["red"])
    book.tags.set([tags["blue"]])
    assert sets(book) == [["red"], [], ["blue"]]


def test_the_reverse_manager_records_the_change_on_the_book(book, tags):
    """tag.books.add(book) changes the book's tags: the event belongs to the book."""
    tags["red"].books.add(book)
    assert sets(book) == [["red"]]


def test_raw_sql_on_the_through_table_is_recorded(book, tags):
    """Triggers, not signals: INSERT, UPDATE and DELETE in SQL are recorded too."""
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO testapp_book_tags (book_id, tag_id) VALUES (%s, %s)", [book.pk, tags["red"].pk]
        )
        cursor.execute(
            "UPDATE testapp_book_tags SET tag_id = %s WHERE book_id = %s", [tags["blue"].pk, book.pk]
        )
        cursor.execute("DELETE FROM testapp_book_tags WHERE book_id = %s", [book.pk])
    assert sets(book) == [["red"], ["blue"], []]


def test_one_statement_over_several_books_records_one_event_per_book(tags):
    """A bulk insert into the through table: one event per book it touched."""
    one, two = Book.objects.create(code="a", title="A"), Book.objects.create(code="b", title="B")
    Book.tags.through.objects.bulk_create(
        [Book.tags.through(book=one, tag=tags["red"]), Book.tags.through(book=two, tag=tags["blue"])]
    )
    assert (sets(one), sets(two)) == ([["red"]], [["blue"]])


def test_m2m_changes_carry_their_context(book, tags):
    """The context of the statement reaches the m2m event."""
    with audit_stream.context(user="ada") as ctx:
        book.tags.add(tags["red"])
    event = BookTagsEvent.objects.get()
    assert (event.pgh_context_id, event.pgh_context.metadata) == (ctx.id, {"user": "ada"})


def test_the_change_feed_shows_a_change_of_the_book_with_the_set_before_and_after(book, tags):
    """Subscribers see the book, not the through table: diff {"tags": [before, after]}."""
    book.tags.add(tags["red"])
    book.tags.add(tags["blue"])
    fold.fold_all()
    changes = Change.objects.for_object(book).filter(label="tags_changed")
    red, blue = tags["red"].pk, tags["blue"].pk
    assert [c.diff for c in changes] == [{"tags": [None, [red]]}, {"tags": [[red], sorted([red, blue])]}]
    assert {c.model for c in changes} == {"testapp.book"}


def test_aggregate_event_of_the_book_includes_its_m2m_changes(book, tags):
    """AggregateEvent.target(book) lists the tag changes with their diff (the first: None)."""
    book.tags.add(tags["red"])
    book.tags.add(tags["blue"])
    rows = (
        AggregateEvent.objects.target(book)
        .filter(pgh_label="tags_changed")
        .order_by("pgh_created_at", "pgh_id")
    )
    red, blue = tags["red"].pk, tags["blue"].pk
    assert [r.pgh_diff for r in rows] == [None, {"tags": [[red], sorted([red, blue])]}]


def test_as_of_gives_the_set_of_the_moment_with_the_members_as_they_were(book, tags):
    """book.tags of a past book: the tags it had then, each with its name then."""
    book.tags.add(tags["red"])
    first = moment()
    book.tags.set([tags["blue"]])
    Tag.objects.filter(pk=tags["red"].pk).update(name="crimson")
    second = moment()
    assert [t.name for t in audit_stream.as_of(book, first).tags.all()] == ["red"]
    assert [t.name for t in audit_stream.as_of(book, second).tags.all()] == ["blue"]
    assert audit_stream.as_of(book, second).tags.filter(name="red").count() == 0


def test_an_explicit_through_model_is_tracked_on_its_own_table(book):
    """Reader.books goes through Loan: creating and deleting loans records the reader's set."""
    reader = Reader.objects.create(name="Ada")
    other = Book.objects.create(code="m2", title="Other")
    loan = Loan.objects.create(reader=reader, book=book)
    Loan.objects.create(reader=reader, book=other)
    loan.delete()
    recorded = (
        ReaderBooksEvent.objects.filter(pgh_obj=reader).order_by("pgh_id").values_list("books", flat=True)
    )
    assert list(recorded) == [[book.pk], sorted([book.pk, other.pk]), [other.pk]]


def test_webhooks_receive_m2m_changes_as_changes_of_the_object(book, tags, settings):
    """The message's type names the book and the label, its diff the sets."""
    settings.AUDIT_STREAM = {**settings.AUDIT_STREAM, "WEBHOOK_ALLOWED_NETWORKS": ["127.0.0.0/8"]}
    endpoint = WebhookEndpoint.objects.create(url="http://127.0.0.1:9/hook")
    book.tags.add(tags["red"])
    fold.fold_all()
    message = WebhookMessage.objects.get(endpoint=endpoint, event_type="testapp.book.tags_changed")
    assert message.payload["data"]["diff"] == {"tags": [None, [tags["red"].pk]]}
