"""Tracked models for the test suite: one per event class and track() option."""

import uuid

import pgtrigger
from django.contrib.auth.models import User
from django.contrib.postgres.fields import (
    ArrayField,
    BigIntegerRangeField,
    DateRangeField,
    DateTimeRangeField,
    DecimalRangeField,
    HStoreField,
    IntegerRangeField,
)
from django.db import models

import audit_stream
from audit_stream.models import BaseAggregateEvent, Event


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


@audit_stream.track(obj_fk=None, model_name="ReviewEvent")
class Review(models.Model):
    """Tracked without pgh_obj: its events point to a product and a user through copied foreign keys."""

    product = models.ForeignKey(Product, on_delete=models.CASCADE, related_name="reviews")
    author = models.ForeignKey(User, null=True, on_delete=models.SET_NULL, related_name="+")
    stars = models.IntegerField(default=5)


class UserAggregateEvent(BaseAggregateEvent):
    """A project's own aggregate event: ``user`` is read from the context metadata."""

    user = models.ForeignKey(
        User, null=True, on_delete=models.DO_NOTHING, db_constraint=False, related_name="+"
    )

    class Meta(BaseAggregateEvent.Meta):  # keeps its ordering (by time, table, id)
        managed = False

    def who(self) -> str:
        return self.user.username if self.user else "nobody"


__all__ = [
    "Customer",
    "Event",
    "Label",
    "LabelEvent",
    "Note",
    "Order",
    "Product",
    "Review",
    "UserAggregateEvent",
]


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
class Shelf(models.Model):
    """A tracked target of a foreign key, for as_of's related objects."""

    name = models.CharField(max_length=100)

    def __str__(self) -> str:
        return self.name


@audit_stream.track()
class Tag(models.Model):
    """A tracked target of a many-to-many field."""

    name = models.CharField(max_length=50, unique=True)

    def __str__(self) -> str:
        return self.name


@audit_stream.track(m2m_fields=["tags"])
class Book(models.Model):
    """Tracked, with a tracked foreign key (shelf), an untracked one (buyer) and tracked tags."""

    code = models.CharField(max_length=20, unique=True)
    title = models.CharField(max_length=200)
    price = models.DecimalField(max_digits=10, decimal_places=2, default=0)
    shelf = models.ForeignKey(Shelf, null=True, on_delete=models.SET_NULL, related_name="books")
    buyer = models.ForeignKey(Customer, null=True, on_delete=models.SET_NULL, related_name="+")
    tags = models.ManyToManyField(Tag, blank=True, related_name="books")

    def __str__(self) -> str:
        return self.title


@audit_stream.track(m2m_fields=["books"])
class Reader(models.Model):
    """A many-to-many field with an explicit through model (declared after it: resolved lazily)."""

    name = models.CharField(max_length=100)
    books = models.ManyToManyField(Book, through="Loan", related_name="readers", blank=True)


class Loan(models.Model):
    """The explicit through model of Reader.books, with a field of its own."""

    reader = models.ForeignKey(Reader, on_delete=models.CASCADE)
    book = models.ForeignKey(Book, on_delete=models.CASCADE)
    until = models.DateField(null=True)


@audit_stream.track()
class Everything(models.Model):
    """Every built-in and ``contrib.postgres`` field type, for the exactness property test (all nullable)."""

    big = models.BigIntegerField(null=True)
    binary = models.BinaryField(null=True)
    boolean = models.BooleanField(null=True)
    char = models.CharField(max_length=100, null=True)
    date = models.DateField(null=True)
    datetime = models.DateTimeField(null=True)
    decimal = models.DecimalField(max_digits=30, decimal_places=10, null=True)
    duration = models.DurationField(null=True)
    email = models.EmailField(null=True)
    file = models.FileField(null=True)
    file_path = models.FilePathField(null=True)
    float = models.FloatField(null=True)
    ip = models.GenericIPAddressField(null=True)
    integer = models.IntegerField(null=True)
    json = models.JSONField(null=True)
    positive_big = models.PositiveBigIntegerField(null=True)
    positive = models.PositiveIntegerField(null=True)
    positive_small = models.PositiveSmallIntegerField(null=True)
    slug = models.SlugField(null=True)
    small = models.SmallIntegerField(null=True)
    text = models.TextField(null=True)
    time = models.TimeField(null=True)
    url = models.URLField(null=True)
    uuid = models.UUIDField(null=True)
    customer = models.ForeignKey(Customer, null=True, on_delete=models.SET_NULL, related_name="+")
    generated = models.GeneratedField(
        expression=models.F("integer") + 1, output_field=models.BigIntegerField(), db_persist=True
    )
    integers = ArrayField(models.IntegerField(null=True), null=True)
    texts = ArrayField(models.TextField(null=True), null=True)
    hstore = HStoreField(null=True)
    integer_range = IntegerRangeField(null=True)
    big_range = BigIntegerRangeField(null=True)
    decimal_range = DecimalRangeField(null=True)
    date_range = DateRangeField(null=True)
    datetime_range = DateTimeRangeField(null=True)


@audit_stream.track(
    audit_stream.Snapshot(),
    audit_stream.BeforeDelete(),
    audit_stream.AfterUpdate(
        "quantity_changed", condition=pgtrigger.Q(old__quantity__df=pgtrigger.F("new__quantity"))
    ),
)
class OrderLine(models.Model):
    """A composite primary key, key columns with odd names, a table name with a space and capitals."""

    pk = models.CompositePrimaryKey("order", "line")
    order = models.ForeignKey(Order, on_delete=models.DO_NOTHING, db_constraint=False, db_column="Order Ref")
    line = models.CharField(max_length=20, db_column="Line No")
    quantity = models.IntegerField(default=1)

    class Meta:
        db_table = "Order Lines"


@audit_stream.track()
class Gadget(models.Model):
    """A UUID primary key in a custom column, in a table whose name has capitals."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, db_column="Gadget ID")
    name = models.CharField(max_length=50, db_column="Name")

    class Meta:
        db_table = "Gadget Stock"


@audit_stream.track(audit_stream.Snapshot(), audit_stream.BeforeDelete(), exclude=["secret"])
class Locker(models.Model):
    """Tracked without one of its fields (exclude=): undo puts it back only when asked (partial=True)."""

    code = models.CharField(max_length=20, unique=True)
    place = models.CharField(max_length=100, default="")
    secret = models.CharField(max_length=100, default="")


@audit_stream.track()
class Ticket(models.Model):
    """Tracked for the partitioning tests alone (tests/test_partitions.py), which partition its events."""

    title = models.CharField(max_length=100)
    state = models.CharField(max_length=20, default="open")


@audit_stream.track(mask=["ssn"])
class Patient(models.Model):
    """Masked fields (tests/test_masking.py): ``ssn`` by ``track(mask=...)``, ``email`` by a setting."""

    name = models.CharField(max_length=100)
    ssn = models.CharField(max_length=11, default="")
    email = models.CharField(max_length=100, default="")
    visits = models.IntegerField(default=0)
