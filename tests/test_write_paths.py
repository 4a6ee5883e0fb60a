"""History is captured on every write path, because triggers do the work."""

from decimal import Decimal

import pytest
from django.db import connection, transaction

from tests.testapp.models import Product, ProductEvent

pytestmark = pytest.mark.django_db


def test_save_is_captured(events):
    product = Product(name="desk", price=100)
    product.save()
    product.price = 90
    product.save()
    assert events(ProductEvent, "price") == [("snapshot", Decimal("100.00")), ("snapshot", Decimal("90.00"))]


def test_queryset_update_is_captured_for_every_row(events):
    Product.objects.bulk_create([Product(name=f"p{i}", stock=0) for i in range(50)])
    assert Product.objects.update(stock=7) == 50
    assert ProductEvent.objects.filter(stock=7).count() == 50


def test_bulk_create_is_captured_for_every_row():
    created = Product.objects.bulk_create([Product(name=f"p{i}") for i in range(300)])
    assert set(ProductEvent.objects.values_list("pgh_obj_id", flat=True)) == {p.pk for p in created}


def test_bulk_update_is_captured():
    products = Product.objects.bulk_create([Product(name=f"p{i}") for i in range(10)])
    for product in products:
        product.stock = 3
    Product.objects.bulk_update(products, ["stock"], batch_size=4)
    assert ProductEvent.objects.filter(stock=3).count() == 10


def test_queryset_delete_is_captured(events):
    Product.objects.bulk_create([Product(name=f"p{i}") for i in range(20)])
    Product.objects.filter(name__in=["p1", "p2"]).delete()
    assert sorted(name for label, name in events(ProductEvent, "name") if label == "before_delete") == [
        "p1",
        "p2",
    ]


def test_raw_sql_is_captured(events, sql):
    sql("INSERT INTO testapp_product (name, price, stock, updated_at) VALUES (%s, %s, 0, now())", ["raw", 5])
    sql("UPDATE testapp_product SET price = 6 WHERE name = %s", ["raw"])
    sql("DELETE FROM testapp_product WHERE name = %s", ["raw"])
    assert [(label, price) for label, price in events(ProductEvent, "price")] == [
        ("snapshot", Decimal("5.00")),
        ("snapshot", Decimal("6.00")),
        ("before_delete", Decimal("6.00")),
    ]


def test_history_survives_deleting_the_object():
    """No cascading foreign key: deleting the object keeps its events."""
    product = Product.objects.create(name="gone", price=1)
    pk = product.pk
    product.delete()
    assert not Product.objects.filter(pk=pk).exists()
    assert list(ProductEvent.objects.filter(pgh_obj_id=pk).values_list("pgh_label", flat=True)) == [
        "snapshot",
        "before_delete",
    ]


def test_rolled_back_changes_leave_no_history():
    with pytest.raises(RuntimeError), transaction.atomic():
        Product.objects.create(name="ghost")
        raise RuntimeError
    assert not ProductEvent.objects.exists()


def test_update_of_zero_rows_writes_nothing(sql):
    Product.objects.filter(name="nobody").update(price=1)
    assert not ProductEvent.objects.exists()


def test_object_history_reads_through_the_related_name():
    product = Product.objects.create(name="chair", price=1)
    product.price = 2
    product.save()
    assert [e.price for e in product.event.order_by("pgh_id")] == [Decimal("1.00"), Decimal("2.00")]
    assert [e.price for e in product.price_changes.all()] == [Decimal("2.00")]


def test_psql_copy_is_captured(events):
    """COPY fires the same statement-level triggers."""
    copy_sql = "COPY testapp_product (name, price, stock, updated_at) FROM STDIN"
    with connection.cursor() as cursor, cursor.cursor.copy(copy_sql) as copy:
        copy.write_row(("copied", 3, 0, "2026-01-01T00:00:00Z"))
    assert events(ProductEvent, "name") == [("snapshot", "copied")]
