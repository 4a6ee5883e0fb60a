"""The admin's "Undo this request": from a context, a history entry or a change-feed row, with permissions."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.urls import reverse
from django.utils import timezone

import audit_stream
from audit_stream.models import Change, Context
from tests.testapp.models import Product

pytestmark = pytest.mark.django_db


def _undo_url(context_id):
    return reverse("admin:audit_stream_context_undo", args=[context_id])


@pytest.fixture
def request_context():
    """A request that updated one product and created another."""
    lamp = Product.objects.create(name="lamp", price=10)
    with audit_stream.context(user=1, url="/import/") as ctx:
        Product.objects.filter(pk=lamp.pk).update(price=99)
        Product.objects.create(name="desk", price=20)
    return ctx.id


def _staff(*codenames):
    user = User.objects.create_user(f"staff{User.objects.count()}", password="pw", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__in=["view_context", *codenames]))
    client = Client()
    client.force_login(user)
    return client


def test_the_context_page_offers_undo_this_request(admin_client, request_context):
    """A context's admin page links to its undo."""
    html = admin_client.get(
        reverse("admin:audit_stream_context_change", args=[request_context])
    ).content.decode()
    assert "Undo this request" in html and _undo_url(request_context) in html


def test_a_history_entry_links_to_its_request(admin_client, request_context):
    """The object history shows, per entry, a link to the context it was made in."""
    lamp = Product.objects.get(name="lamp")
    html = admin_client.get(reverse("admin:testapp_product_history", args=[lamp.pk])).content.decode()
    assert reverse("admin:audit_stream_context_change", args=[request_context]) in html


def test_a_change_feed_row_links_to_its_request(admin_client, request_context):
    """The change feed's list shows each change's context as a link."""
    Change.objects.create(
        event_table="t",
        event_id=1,
        model="testapp.product",
        object_id="1",
        label="snapshot",
        context_id=request_context,
        created_at=timezone.now(),
        diff={},
        snapshot={},
    )
    html = admin_client.get(reverse("admin:audit_stream_change_changelist")).content.decode()
    assert reverse("admin:audit_stream_context_change", args=[request_context]) in html


def test_the_confirmation_page_lists_every_change_and_changes_nothing(admin_client, request_context):
    """GET shows each object with its action and field values, and writes nothing."""
    before = sorted(Product.objects.values_list("name", "price"))
    html = admin_client.get(_undo_url(request_context)).content.decode()
    assert "1 to delete, 0 to restore, 1 to update" in html
    assert "<del>99.00</del>" in html and "<ins>10.00</ins>" in html
    assert 'name="confirm"' in html
    assert sorted(Product.objects.values_list("name", "price")) == before


def test_confirming_runs_the_undo_in_a_new_context(admin_client, admin_user, request_context):
    """POST with confirm undoes the request; the undo's context records who did it."""
    response = admin_client.post(_undo_url(request_context), {"confirm": "1"})
    assert response.status_code == 302
    assert list(Product.objects.values_list("name", "price")) == [("lamp", 10)]
    undo_context = Context.objects.get(metadata__undo_of=[str(request_context)])
    assert undo_context.metadata["user"] == admin_user.pk
    assert response.url == reverse("admin:audit_stream_context_change", args=[undo_context.pk])


def test_conflicts_are_listed_and_block_the_undo_until_forced(admin_client, request_context):
    """A later change is shown as a conflict; confirming without force changes nothing; with force it runs."""
    Product.objects.filter(name="lamp").update(stock=7)
    html = admin_client.get(_undo_url(request_context)).content.decode()
    assert "changed after it by testapp_productevent:" in html and 'name="force"' in html
    assert 'name="confirm"' not in html
    admin_client.post(_undo_url(request_context), {"confirm": "1"})
    assert Product.objects.filter(name="desk").exists()
    admin_client.post(_undo_url(request_context), {"confirm": "1", "force": "on"})
    assert list(Product.objects.values_list("name", "price", "stock")) == [("lamp", 10, 0)]


def test_a_user_without_a_needed_permission_sees_which_and_nothing_changes(request_context):
    """Change but no delete permission on products: the page names testapp.delete_product; POST refused."""
    client = _staff("change_product")
    html = client.get(_undo_url(request_context)).content.decode()
    assert "testapp.delete_product" in html and 'name="confirm"' not in html
    response = client.post(_undo_url(request_context), {"confirm": "1"})
    assert response.status_code == 403
    assert "testapp.delete_product" in response.content.decode()
    assert Product.objects.filter(name="desk").exists()
    assert Product.objects.get(name="lamp").price == 99


def test_a_user_with_every_needed_permission_can_undo(request_context):
    """Change and delete permission on products are enough for updates and deletes."""
    client = _staff("change_product", "delete_product")
    client.post(_undo_url(request_context), {"confirm": "1"})
    assert list(Product.objects.values_list("name", flat=True)) == ["lamp"]


def test_restoring_needs_the_add_permission(request_context):
    """Undoing a delete re-creates the object: it needs the add permission."""
    lamp = Product.objects.get(name="lamp")
    with audit_stream.context() as ctx:
        lamp.delete()
    client = _staff("change_product", "delete_product")
    html = client.get(_undo_url(ctx.id)).content.decode()
    assert "testapp.add_product" in html
    assert client.post(_undo_url(ctx.id), {"confirm": "1"}).status_code == 403
    assert not Product.objects.filter(name="lamp").exists()


def test_a_user_without_access_to_contexts_cannot_open_the_page(request_context):
    """Without the view permission on contexts the page is forbidden."""
    user = User.objects.create_user("nobody", password="pw", is_staff=True)
    client = Client()
    client.force_login(user)
    assert client.get(_undo_url(request_context)).status_code == 403
