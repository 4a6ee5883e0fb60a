"""VersionModelAdmin on a model logged by ``initlogging`` (no ``@track``): history, revert, restore."""

from __future__ import annotations

import io
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.urls import reverse

import audit_stream
from audit_stream.models import RowLog
from tests.testapp.models import Customer, Supplier

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def logged():
    call_command("initlogging", stdout=io.StringIO(), stderr=io.StringIO())


@pytest.fixture
def supplier(admin_user):
    with audit_stream.context(user=admin_user.pk, reason="onboarding"):
        supplier = Supplier.objects.create(name="Acme", rating=Decimal("1.5"))
    Supplier.objects.filter(pk=supplier.pk).update(rating=Decimal("2.25"), active=False)
    return supplier


def _key(entry):
    return f"audit_stream_row_log:{entry.pgh_id}"


def _history(pk):
    return reverse("admin:testapp_supplier_history", args=[pk])


def test_history_page_shows_each_logged_change_newest_first(admin_client, admin_user, supplier):
    html = admin_client.get(_history(supplier.pk)).content.decode()
    assert html.index(">update<") < html.index(">insert<")
    assert "<del>1.500</del>" in html and "<ins>2.250</ins>" in html
    assert admin_user.username in html and "onboarding" in html
    assert "Revert to this version" in html


def test_history_shows_foreign_keys_as_their_objects(admin_client):
    customer = Customer.objects.create(email="c@example.com", name="Carol")
    supplier = Supplier.objects.create(name="Acme")
    Supplier.objects.filter(pk=supplier.pk).update(customer=customer)
    html = admin_client.get(_history(supplier.pk)).content.decode()
    assert "<ins>Customer object (" in html or f"<ins>{customer}</ins>" in html


def test_revert_through_the_admin_puts_back_the_recorded_version(admin_client, admin_user, supplier):
    first = RowLog.objects.filter(pgh_obj_id=str(supplier.pk)).earliest("pgh_id")
    url = reverse("admin:testapp_supplier_revert", args=[supplier.pk, _key(first)])
    confirmation = admin_client.get(url).content.decode()
    assert "<del>2.25" in confirmation and "<ins>1.5" in confirmation
    assert admin_client.post(url).status_code == 302
    supplier.refresh_from_db()
    assert (supplier.rating, supplier.active) == (Decimal("1.500"), True)
    revert = RowLog.objects.filter(pgh_obj_id=str(supplier.pk)).latest("pgh_id")
    assert revert.old_data == {"rating": Decimal("2.250"), "active": False}
    assert revert.pgh_context.metadata["reverted_to"] == _key(first)
    assert revert.pgh_context.metadata["user"] == admin_user.pk


def test_revert_rebuilds_versions_across_several_later_changes(admin_client, supplier):
    Supplier.objects.filter(pk=supplier.pk).update(name="Acme Ltd")
    Supplier.objects.filter(pk=supplier.pk).update(rating=9)
    update = RowLog.objects.filter(pgh_obj_id=str(supplier.pk), pgh_label="update").earliest("pgh_id")
    admin_client.post(reverse("admin:testapp_supplier_revert", args=[supplier.pk, _key(update)]))
    supplier.refresh_from_db()
    assert (supplier.name, supplier.rating, supplier.active) == ("Acme", Decimal("2.250"), False)


def test_revert_needs_the_change_permission(client, django_user_model, supplier):
    user = django_user_model.objects.create_user("viewer", password="pw", is_staff=True)
    client.force_login(user)
    first = RowLog.objects.filter(pgh_obj_id=str(supplier.pk)).earliest("pgh_id")
    assert (
        client.post(reverse("admin:testapp_supplier_revert", args=[supplier.pk, _key(first)])).status_code
        == 403
    )


def test_an_entry_of_another_row_is_not_found(admin_client, supplier):
    other = Supplier.objects.create(name="Other")
    entry = RowLog.objects.filter(pgh_obj_id=str(other.pk)).get()
    url = reverse("admin:testapp_supplier_revert", args=[supplier.pk, _key(entry)])
    assert admin_client.get(url).status_code == 404


def test_restore_recreates_a_deleted_row(admin_client, supplier):
    pk = supplier.pk
    supplier.delete()
    assert f"supplier {pk}" in admin_client.get(reverse("admin:testapp_supplier_deleted")).content.decode()
    html = admin_client.get(_history(pk)).content.decode()
    assert "was deleted" in html and "Restore" in html
    delete = RowLog.objects.filter(pgh_obj_id=str(pk)).latest("pgh_id")
    assert (
        admin_client.post(reverse("admin:testapp_supplier_restore", args=[pk, _key(delete)])).status_code
        == 302
    )
    restored = Supplier.objects.get(pk=pk)
    assert (restored.name, restored.rating, restored.active) == ("Acme", Decimal("2.250"), False)
    assert RowLog.objects.filter(pgh_obj_id=str(pk)).latest("pgh_id").pgh_label == "insert"


def test_history_follows_a_renamed_table(admin_client, supplier, sql):
    sql("SET CONSTRAINTS ALL IMMEDIATE")
    sql("ALTER TABLE testapp_supplier RENAME TO supplier_old")
    sql("UPDATE supplier_old SET rating = 5 WHERE id = %s", [supplier.pk])  # logged as public.supplier_old
    sql("SET CONSTRAINTS ALL IMMEDIATE")
    sql("ALTER TABLE supplier_old RENAME TO testapp_supplier")
    Supplier.objects.filter(pk=supplier.pk).update(name="Renamed")
    html = admin_client.get(_history(supplier.pk)).content.decode()
    assert html.count("Revert to this version") == 4
    assert "<ins>5.000</ins>" in html
