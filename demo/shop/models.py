"""The shop's models. All but ``Supplier`` are tracked: ``audit_stream.track()``
generates ``<Model>Event`` (table ``shop_<model>event``) with a snapshot of
every insert and real change, and the row as it was before every delete.
``Supplier`` shows the other mode: schema-wide logging with ``initlogging``.
"""

from decimal import Decimal

import pgtrigger
from django.core.validators import MinValueValidator
from django.db import models
from django.db.models import F, Sum

import audit_stream


@audit_stream.track()
class Customer(models.Model):
    name = models.CharField(max_length=100)
    email = models.EmailField(unique=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return f"{self.name} <{self.email}>"


@audit_stream.track()
class Product(models.Model):
    class Category(models.TextChoices):
        COFFEE = "coffee", "Coffee"
        TEA = "tea", "Tea"
        EQUIPMENT = "equipment", "Equipment"
        SNACKS = "snacks", "Snacks"

    sku = models.CharField("SKU", max_length=32, unique=True)
    name = models.CharField(max_length=100)
    category = models.CharField(max_length=20, choices=Category)
    price = models.DecimalField(max_digits=10, decimal_places=2, validators=[MinValueValidator(0)])
    stock = models.IntegerField(default=0)

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name


@audit_stream.track()
@audit_stream.track(
    audit_stream.AfterUpdate(
        "status_changed", condition=pgtrigger.Q(old__status__df=pgtrigger.F("new__status"))
    ),
    fields=["status"],
    model_name="OrderStatusChange",
    related_name="status_changes",
)
class Order(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        PAID = "paid", "Paid"
        SHIPPED = "shipped", "Shipped"
        DELIVERED = "delivered", "Delivered"
        CANCELLED = "cancelled", "Cancelled"

    customer = models.ForeignKey(Customer, on_delete=models.PROTECT, related_name="orders")
    status = models.CharField(max_length=20, choices=Status, default=Status.PENDING)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self):
        return f"Order #{self.pk}"

    def total(self):
        """The sum of the order's lines."""
        total = self.lines.aggregate(total=Sum(F("quantity") * F("unit_price")))["total"]
        return total or Decimal("0.00")


@audit_stream.track()
class OrderLine(models.Model):
    order = models.ForeignKey(Order, on_delete=models.CASCADE, related_name="lines")
    product = models.ForeignKey(Product, on_delete=models.PROTECT, related_name="order_lines")
    quantity = models.PositiveIntegerField(default=1, validators=[MinValueValidator(1)])
    unit_price = models.DecimalField(max_digits=10, decimal_places=2)

    class Meta:
        ordering = ["pk"]

    def __str__(self):
        return f"{self.quantity} x {self.product}"


class Supplier(models.Model):
    """Not tracked with ``@track``: ``manage.py initlogging`` (run by ``demo_setup``)
    logs its table into the shared row log, as django-pgMemento would, and
    ``VersionModelAdmin`` shows and reverts its history from there."""

    name = models.CharField(max_length=100, unique=True)
    email = models.EmailField()
    lead_time_days = models.PositiveIntegerField(default=7)
    rating = models.DecimalField(max_digits=3, decimal_places=1, default=Decimal("3.0"))
    active = models.BooleanField(default=True)

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name
