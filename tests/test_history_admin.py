"""VersionModelAdmin: the history page, revert and restore, through the Django test client."""

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.urls import reverse

import audit_stream
from audit_stream.models import Context
from tests.testapp.models import Customer, Order, OrderEvent, Product, ProductEvent

pytestmark = pytest.mark.django_db


def _history(pk):
    return reverse("admin:testapp_product_history", args=[pk])


def _revert_url(product, event):
    return reverse("admin:testapp_product_revert", args=[product.pk, f"testapp_productevent:{event.pgh_id}"])


@pytest.fixture
def product(admin_user):
    with audit_stream.context(user=admin_user.pk, url="/admin/", reason="launch"):
        product = Product.objects.create(name="lamp", price=10)
    Product.objects.filter(pk=product.pk).update(price=12)
    return product


def _staff(*perms):
    user = User.objects.create_user(f"staff{User.objects.count()}", password="pw", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__in=perms))
    client = Client()
    client.force_login(user)
    return client


def test_history_page_shows_time_label_user_metadata_and_diff(admin_client, admin_user, product):
    html = admin_client.get(_history(product.pk)).content.decode()
    assert "snapshot" in html and "price_changed" in html
    assert admin_user.username in html and "reason: launch" in html and "url: /admin/" in html
    assert "<del>10.00</del>" in html and "<ins>12.00</ins>" in html
    assert "Revert to this version" in html


def test_history_shows_foreign_keys_as_their_objects(admin_client):
    customer = Customer.objects.create(email="ada@example.com", name="Ada")
    order = Order.objects.create(customer=customer)
    html = admin_client.get(reverse("admin:testapp_order_history", args=[order.pk])).content.decode()
    assert str(customer) in html


def test_history_is_paginated_newest_first(admin_client, product):
    for price in range(20, 50):
        Product.objects.filter(pk=product.pk).update(price=price)
    first = admin_client.get(_history(product.pk)).content.decode()
    assert "Page 1 of 3" in first and "<ins>49.00</ins>" in first and "<ins>20.00</ins>" not in first
    last = admin_client.get(_history(product.pk) + "?p=3").content.decode()
    assert "Page 3 of 3" in last


def test_history_page_query_count_is_constant(admin_client, product, django_assert_max_num_queries):
    for price in range(20, 60):
        Product.objects.filter(pk=product.pk).update(price=price)
    with django_assert_max_num_queries(10):
        assert admin_client.get(_history(product.pk)).status_code == 200


def test_history_needs_view_permission(product):
    assert _staff().get(_history(product.pk)).status_code == 403
    viewer = _staff("view_product")
    response = viewer.get(_history(product.pk))
    assert response.status_code == 200 and "Revert to this version" not in response.content.decode()


def test_revert_confirmation_shows_the_diff_it_will_apply(admin_client, product):
    first = ProductEvent.objects.filter(pgh_obj=product).earliest("pgh_id")
    html = admin_client.get(_revert_url(product, first)).content.decode()
    assert "<del>12.00</del>" in html and "<ins>10.00</ins>" in html
    product.refresh_from_db()
    assert product.price == 12  # GET changes nothing


def test_revert_changes_the_row_and_is_itself_recorded(admin_client, admin_user, product):
    first = ProductEvent.objects.filter(pgh_obj=product).earliest("pgh_id")
    response = admin_client.post(_revert_url(product, first))
    assert response.status_code == 302
    product.refresh_from_db()
    assert product.price == 10
    last = ProductEvent.objects.filter(pgh_obj=product).latest("pgh_id")
    assert last.price == 10
    metadata = Context.objects.get(pk=last.pgh_context_id).metadata
    assert metadata["reverted_to"] == f"testapp_productevent:{first.pgh_id}"
    assert metadata["user"] == admin_user.pk  # the request's context: who reverted


def test_revert_needs_the_change_permission(product):
    first = ProductEvent.objects.filter(pgh_obj=product).earliest("pgh_id")
    assert _staff("view_product").post(_revert_url(product, first)).status_code == 403
    product.refresh_from_db()
    assert product.price == 12


def test_revert_needs_csrf(admin_user, product):
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin_user)
    first = ProductEvent.objects.filter(pgh_obj=product).earliest("pgh_id")
    assert client.post(_revert_url(product, first)).status_code == 403
    product.refresh_from_db()
    assert product.price == 12


def test_revert_conflicting_with_a_unique_value_fails_clearly_and_changes_nothing(admin_client, product):
    first = ProductEvent.objects.filter(pgh_obj=product).earliest("pgh_id")
    Product.objects.filter(pk=product.pk).update(name="lamp v2")
    Product.objects.create(name="lamp")  # the old name is taken now
    response = admin_client.post(_revert_url(product, first), follow=True)
    html = response.content.decode()
    assert "Could not revert" in html and "Nothing was changed" in html
    product.refresh_from_db()
    assert (product.name, product.price) == ("lamp v2", 12)


def test_restore_recreates_a_deleted_object(admin_client, product):
    pk = product.pk
    product.delete()
    deleted = admin_client.get(reverse("admin:testapp_product_deleted")).content.decode()
    assert f"product {pk}" in deleted
    html = admin_client.get(_history(pk)).content.decode()
    assert "was deleted" in html and "Restore" in html
    last = ProductEvent.objects.filter(pgh_obj_id=pk).latest("pgh_id")
    url = reverse("admin:testapp_product_restore", args=[pk, f"testapp_productevent:{last.pgh_id}"])
    assert admin_client.post(url).status_code == 302
    restored = Product.objects.get(pk=pk)
    assert (restored.name, restored.price) == ("lamp", 12)
    context = Context.objects.get(
        pk=ProductEvent.objects.filter(pgh_obj_id=pk).latest("pgh_id").pgh_context_id
    )
    assert context.metadata["restored_from"] == f"testapp_productevent:{last.pgh_id}"


@pytest.mark.parametrize(
    ("perms", "restores"),
    [
        (["view_product"], False),
        (["view_product", "add_product"], False),
        (["view_product", "change_product"], False),
        (["view_product", "add_product", "change_product"], True),
    ],
)
def test_restore_needs_the_add_and_the_change_permission(product, perms, restores):
    """Restoring re-creates a row (add) from history (change): one of the two is not enough."""
    pk = product.pk
    product.delete()
    last = ProductEvent.objects.filter(pgh_obj_id=pk).latest("pgh_id")
    url = reverse("admin:testapp_product_restore", args=[pk, f"testapp_productevent:{last.pgh_id}"])
    client = _staff(*perms)
    history = client.get(_history(pk)).content.decode()
    assert ('value="Restore"' in history) is restores  # the button is offered only to who may use it
    assert client.post(url).status_code == (302 if restores else 403)
    assert Product.objects.filter(pk=pk).exists() is restores


def test_restore_is_a_post(admin_client, product):
    pk = product.pk
    product.delete()
    last = ProductEvent.objects.filter(pgh_obj_id=pk).latest("pgh_id")
    url = reverse("admin:testapp_product_restore", args=[pk, f"testapp_productevent:{last.pgh_id}"])
    assert admin_client.get(url).status_code == 403
    assert not Product.objects.filter(pk=pk).exists()


def test_an_event_model_without_every_field_cannot_revert(admin_client, product):
    from audit_stream import revert
    from tests.testapp.models import PriceChange

    event = PriceChange.objects.filter(pgh_obj=product).get()
    with pytest.raises(revert.RevertError, match="does not record every field"):
        revert.revert(event)


def test_event_models_have_read_only_admins(admin_client, product):
    url = reverse("admin:testapp_productevent_changelist") + f"?pgh_obj__exact={product.pk}"
    assert admin_client.get(url).status_code == 200
    assert admin_client.get(reverse("admin:testapp_productevent_add")).status_code == 403


def test_order_revert_with_several_event_labels(admin_client):
    customer = Customer.objects.create(email="a@example.com", name="A")
    order = Order.objects.create(customer=customer, status="new")
    Order.objects.filter(pk=order.pk).update(status="paid")
    event = OrderEvent.objects.filter(pgh_obj=order, pgh_label="after_insert").get()
    url = reverse("admin:testapp_order_revert", args=[order.pk, f"testapp_orderevent:{event.pgh_id}"])
    admin_client.post(url)
    order.refresh_from_db()
    assert order.status == "new"
