"""Tracked models for the test suite: one per event class and track() option."""

import pgtrigger
from django.contrib.auth.models import User
from django.db import models

import audit_stream
from audit_stream.models import Event


@audit_stream.track()  # the defaults: Snapshot() and BeforeDelete()
@audit_stream.track(
    audit_stream.AfterUpdate(
        "price_changed", condition=pgtrigger.Q(old__price__df=pgtrigger.F("new__price"))
    ),
    fields=["price"],
    related_name="price_changes",
    model_name="PriceChange",
)
class Product(models.Model):
    name = models.CharField(max_length=100, unique=True)
    price = models.DecimalField(max_digits=10, decimal_places=2, default=0)
    stock = models.IntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)


class Customer(models.Model):
    email = models.EmailField(unique=True)
    name = models.CharField(max_length=100)


@audit_stream.track(
    audit_stream.AfterInsert(),
    audit_stream.AfterUpdate(),
    audit_stream.BeforeUpdate(),
    audit_stream.BeforeDelete(),
    audit_stream.AfterInsertOrUpdate(),
    audit_stream.Event("shipped"),
    model_name="OrderEvent",
)
class Order(models.Model):
    customer = models.ForeignKey(Customer, on_delete=models.CASCADE, related_name="orders")
    status = models.CharField(max_length=20, default="new")
    note = models.TextField(blank=True, default="")


@audit_stream.track(audit_stream.Snapshot(), exclude=["note"], obj_fk=None, context_fk=None)
class Note(models.Model):
    title = models.CharField(max_length=100)
    note = models.TextField(blank=True, default="")


class Label(models.Model):
    """Tracked through get_event_model(): the user declares the event model."""

    code = models.SlugField(primary_key=True)
    text = models.CharField(max_length=100)


class LabelEvent(
    audit_stream.get_event_model(
        Label,
        audit_stream.DatabaseEvent(
            "renamed",
            when=pgtrigger.After,
            operation=pgtrigger.Update,
            condition=pgtrigger.Q(old__text__df=pgtrigger.F("new__text")),
            snapshot="OLD",
        ),
    )
):
    class Meta:
        indexes = [models.Index(fields=["pgh_created_at"], name="labelevent_created")]


# A model of another app: its history (and the trigger migrations) live here.
audit_stream.track(
    audit_stream.Snapshot(), fields=["username", "email"], app_label="testapp", model_name="UserEvent"
)(User)

__all__ = ["Customer", "Event", "Label", "LabelEvent", "Note", "Order", "Product"]


class Supplier(models.Model):
    """Not tracked: logged schema-wide by ``manage.py initlogging`` in the row-log tests."""

    name = models.CharField(max_length=100, unique=True)
    rating = models.DecimalField(max_digits=6, decimal_places=3, default=0)
    active = models.BooleanField(default=True)
    since = models.DateField(null=True)
    customer = models.ForeignKey(Customer, null=True, on_delete=models.SET_NULL, related_name="+")

    def __str__(self) -> str:
        return self.name


@audit_stream.track()
class Ticket(models.Model):
    """Tracked for the partitioning tests alone (tests/test_partitions.py), which partition its events."""

    title = models.CharField(max_length=100)
    state = models.CharField(max_length=20, default="open")
