"""The admin history page: "View as of this version" and many-to-many changes."""

from __future__ import annotations

import re

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse

from tests.testapp.models import Book, BookEvent, Shelf, Tag

pytestmark = pytest.mark.django_db(transaction=True)


def history(book):
    return reverse("admin:testapp_book_history", args=[book.pk])


def as_of_url(book, event):
    return reverse("admin:testapp_book_as_of", args=[book.pk, f"{event._meta.db_table}:{event.pgh_id}"])


@pytest.fixture
def book():
    shelf = Shelf.objects.create(name="Attic")
    book = Book.objects.create(code="h1", title="First title", price=3, shelf=shelf)
    book.tags.add(Tag.objects.create(name="red"))
    Shelf.objects.filter(pk=shelf.pk).update(name="Cellar")
    Book.objects.filter(pk=book.pk).update(title="Second title")
    return book


def test_each_version_links_to_the_object_as_of_its_moment(admin_client, book):
    """The history page links every version (not deletes) to its as-of page."""
    html = admin_client.get(history(book)).content.decode()
    first = BookEvent.objects.filter(pgh_obj=book).order_by("pgh_id").first()
    assert "View as of this version" in html
    assert as_of_url(book, first) in html


def test_the_as_of_page_shows_the_fields_related_objects_and_sets_of_that_moment(admin_client, book):
    """The first version: its title, its shelf's name then, its tags then; read-only (no form)."""
    first = BookEvent.objects.filter(pgh_obj=book).order_by("pgh_id").first()
    response = admin_client.get(as_of_url(book, first))
    html = response.content.decode()
    assert response.status_code == 200
    cells = dict(re.findall(r"<tr><th>(.*?)</th><td>(.*?)</td></tr>", html))
    assert (cells["Title"], cells["Shelf"], cells["Price"]) == ("First title", "Attic", "3.00")
    assert "<form" not in html.split('id="content-main"')[1]
    last = BookEvent.objects.filter(pgh_obj=book).order_by("pgh_id").last()
    cells = dict(
        re.findall(
            r"<tr><th>(.*?)</th><td>(.*?)</td></tr>", admin_client.get(as_of_url(book, last)).content.decode()
        )
    )
    assert (cells["Title"], cells["Shelf"], cells["Tags"]) == ("Second title", "Cellar", "red")


def test_the_as_of_page_needs_the_view_permission(book):
    """A staff user without view or change permission on books gets 403."""
    user = User.objects.create_user("nobody", password="pw", is_staff=True)
    client = Client()
    client.force_login(user)
    first = BookEvent.objects.filter(pgh_obj=book).order_by("pgh_id").first()
    assert client.get(as_of_url(book, first)).status_code == 403


def test_history_shows_many_to_many_changes_as_members_added_and_removed(admin_client):
    """tags: + "red", \u2212 "blue" in the history, not the through table's ids."""
    book = Book.objects.create(code="h2", title="T")
    red, blue = Tag.objects.create(name="red"), Tag.objects.create(name="blue")
    book.tags.add(blue)
    book.tags.remove(blue)
    book.tags.add(red)
    html = admin_client.get(history(book)).content.decode()
    assert "<del>\u2212 &quot;blue&quot;</del>" in html
    assert "<ins>+ &quot;red&quot;</ins>" in html
