"""Simulated shop traffic for ``manage.py demo_traffic``.

Each call of :meth:`Traffic.step` plays one request of a customer, a member
of staff or a webhook, inside ``audit_stream.context(user=..., url=...,
request_id=...)``, so every event it writes points to who did it and where.
Between them the operations use the write paths the triggers see:
``save()``, ``QuerySet.update()``, ``bulk_create()``, ``Model.delete()`` and
``QuerySet.delete()``.
"""

import random
import uuid
from collections import Counter
from decimal import Decimal

from django.db import IntegrityError, connection, transaction
from django.db.models import Exists, F, OuterRef, ProtectedError

import audit_stream
from demo.shop.models import Customer, Order, OrderLine, Product, Supplier

Status = Order.Status

STAFF = ["alice", "bob", "carol", "dave"]
FIRST_NAMES = ["Amara", "Bruno", "Chen", "Dana", "Emil", "Farah", "Goran", "Hana", "Ivo", "Jun"]
LAST_NAMES = ["Okafor", "Silva", "Wei", "Novak", "Larsen", "Haddad", "Petrov", "Sato", "Kim"]
NEW_PRODUCTS = {
    Product.Category.COFFEE: ["Kenya AA, 250 g", "Guatemala Antigua, 250 g", "Rwanda Nyamasheke, 250 g"],
    Product.Category.TEA: ["Darjeeling first flush, 100 g", "Uji matcha, 30 g", "Yunnan black, 100 g"],
    Product.Category.EQUIPMENT: ["Milk jug", "Coffee scale", "Tamper", "Cold brew bottle"],
    Product.Category.SNACKS: ["Oat cookies", "Hazelnut brittle", "Matcha wafers"],
}
SKU_PREFIXES = {
    Product.Category.COFFEE: "COF",
    Product.Category.TEA: "TEA",
    Product.Category.EQUIPMENT: "EQP",
    Product.Category.SNACKS: "SNK",
}

#: The operations and how often each happens, relative to the others.
WEIGHTS = {
    "advance_order": 40,
    "place_order": 15,
    "reprice_product": 14,
    "sign_up": 8,
    "clear_cancelled_order": 8,
    "update_profile": 6,
    "restock_category": 4,
    "delete_customer": 3,
    "import_products": 2,
    "review_supplier": 2,
}


class Traffic:
    """Plays random shop requests; counts them by kind in :attr:`counts`."""

    def __init__(self, rng=None):
        self.rng = rng or random.Random()
        self.counts = Counter()
        self._names = list(WEIGHTS)
        self._weights = list(WEIGHTS.values())

    def step(self):
        """Play one request and return its kind.

        An operation with nothing to work on (no cancelled order to clear,
        say) is replaced by a sign-up. A write that loses a race with another
        process (a unique email, a customer who just placed an order) is
        counted as ``conflict``.
        """
        kind = self.rng.choices(self._names, self._weights)[0]
        try:
            if not getattr(self, kind)():
                kind = "sign_up"
                self.sign_up()
        except (IntegrityError, ProtectedError):
            kind = "conflict"
        self.counts[kind] += 1
        return kind

    # Helpers.

    def request(self, user, url):
        """The audit_stream context of one simulated request."""
        request_id = str(uuid.UUID(int=self.rng.getrandbits(128), version=4))
        return audit_stream.context(user=user, url=url, request_id=request_id)

    def pick(self, queryset, limit=50):
        """One of the first ``limit`` (or all, if ``None``) objects of ``queryset``, or ``None``.

        The choice is made here, not with ``ORDER BY random()``, so that
        ``--seed`` decides it.
        """
        pks = list(queryset.values_list("pk", flat=True)[:limit])
        return queryset.model._default_manager.get(pk=self.rng.choice(pks)) if pks else None

    def fake_email(self, name):
        local = name.lower().replace(" ", ".")
        return f"{local}.{self.rng.randrange(10**6):06d}@example.{self.rng.choice(['com', 'org', 'net'])}"

    # Operations: each returns True if it changed something.

    def sign_up(self):
        """A visitor creates an account (``save()``)."""
        name = f"{self.rng.choice(FIRST_NAMES)} {self.rng.choice(LAST_NAMES)}"
        with self.request("anonymous", "/accounts/signup/"):
            Customer.objects.create(name=name, email=self.fake_email(name))
        return True

    def update_profile(self):
        """A customer changes their email address (``save()``)."""
        customer = self.pick(Customer.objects.order_by("-pk"), limit=200)
        if customer is None:
            return False
        with self.request(customer.email, "/accounts/profile/"):
            customer.email = self.fake_email(customer.name)
            customer.save(update_fields=["email"])
        return True

    def place_order(self):
        """A customer checks out: an order, its lines and the stock, in one transaction."""
        customer = self.pick(Customer.objects.order_by("-pk"), limit=200)
        in_stock = list(Product.objects.filter(stock__gt=0).order_by("pk"))
        if customer is None or not in_stock:
            return False
        products = self.rng.sample(in_stock, k=min(len(in_stock), self.rng.randint(1, 4)))
        with self.request(customer.email, "/checkout/"), transaction.atomic():
            order = Order.objects.create(customer=customer)
            lines = 0
            for product in products:
                quantity = self.rng.choice([1, 1, 1, 2, 2, 3])
                taken = Product.objects.filter(pk=product.pk, stock__gte=quantity).update(
                    stock=F("stock") - quantity
                )
                if taken:
                    OrderLine.objects.create(
                        order=order, product=product, quantity=quantity, unit_price=product.price
                    )
                    lines += 1
            if not lines:
                transaction.set_rollback(True)
        return lines > 0

    def advance_order(self):
        """An open order moves on: paid, shipped, delivered, or cancelled (``save()``)."""
        order = self.pick(
            Order.objects.filter(status__in=[Status.PENDING, Status.PAID, Status.SHIPPED]).order_by("pk")
        )
        if order is None:
            return False
        staff_url = f"/admin/shop/order/{order.pk}/change/"
        if order.status == Status.PENDING and self.rng.random() < 0.1:
            user, url, status = order.customer.email, f"/orders/{order.pk}/cancel/", Status.CANCELLED
        elif order.status == Status.PENDING:
            user, url, status = "payments-webhook", "/webhooks/payments/", Status.PAID
        elif order.status == Status.PAID and self.rng.random() < 0.05:
            user, url, status = self.rng.choice(STAFF), staff_url, Status.CANCELLED
        elif order.status == Status.PAID:
            user, url, status = self.rng.choice(STAFF), staff_url, Status.SHIPPED
        else:
            user, url, status = "carrier-webhook", "/webhooks/carrier/", Status.DELIVERED
        with self.request(user, url), transaction.atomic():
            order.status = status
            order.save(update_fields=["status"])
            if status == Status.CANCELLED:
                for line in order.lines.all():
                    Product.objects.filter(pk=line.product_id).update(stock=F("stock") + line.quantity)
        return True

    def clear_cancelled_order(self):
        """Staff tidy a cancelled order by deleting its lines (``QuerySet.delete()``)."""
        order = self.pick(
            Order.objects.filter(
                Exists(OrderLine.objects.filter(order=OuterRef("pk"))), status=Status.CANCELLED
            ).order_by("pk")
        )
        if order is None:
            return False
        with self.request(self.rng.choice(STAFF), f"/admin/shop/order/{order.pk}/change/"):
            order.lines.all().delete()
        return True

    def reprice_product(self):
        """Staff edit a product: a new price, or a stock count correction (``save()``)."""
        product = self.pick(Product.objects.order_by("pk"), limit=None)
        if product is None:
            return False
        with self.request(self.rng.choice(STAFF), f"/admin/shop/product/{product.pk}/change/"):
            if self.rng.random() < 0.7:
                percent = self.rng.choice([-10, -5, -3, 2, 4, 5, 8, 10])
                price = (product.price * (100 + percent) / 100).quantize(Decimal("0.01"))
                product.price = price if price >= Decimal("0.50") else product.price + Decimal("0.50")
            else:
                delta = self.rng.choice([-3, -2, -1, 1, 2, 3])
                product.stock = product.stock + delta if product.stock + delta >= 0 else product.stock - delta
            product.save()
        return True

    def restock_category(self):
        """A delivery restocks the category that runs lowest (``QuerySet.update()``)."""
        category = Product.objects.order_by("stock").values_list("category", flat=True).first()
        if category is None:
            return False
        with self.request("warehouse", f"/admin/shop/product/?category={category}"):
            Product.objects.filter(category=category).update(stock=F("stock") + self.rng.randint(5, 15))
        return True

    def import_products(self):
        """A supplier's new arrivals are imported at once (``bulk_create()``)."""
        category = self.rng.choice(Product.Category.values)
        products = [
            Product(
                sku=f"{SKU_PREFIXES[category]}-{self.rng.getrandbits(32):08X}",
                name=self.rng.choice(NEW_PRODUCTS[category]),
                category=category,
                price=Decimal(self.rng.randint(300, 4000)) / 100,
                stock=self.rng.randint(10, 60),
            )
            for _ in range(self.rng.randint(2, 4))
        ]
        with self.request(self.rng.choice(STAFF), "/admin/shop/product/import/"):
            Product.objects.bulk_create(products)
        return True

    def review_supplier(self):
        """A buyer re-rates a supplier, in raw SQL: its table is logged by ``initlogging``, not ``@track``."""
        supplier = self.pick(Supplier.objects.order_by("pk"), limit=None)
        if supplier is None:
            return False
        rating = Decimal(self.rng.randint(20, 50)) / 10
        url = f"/admin/shop/supplier/{supplier.pk}/change/"
        with self.request(self.rng.choice(STAFF), url), connection.cursor() as cursor:
            cursor.execute(
                "UPDATE shop_supplier SET rating = %s, lead_time_days = %s WHERE id = %s",
                [rating, self.rng.randint(3, 30), supplier.pk],
            )
        return True

    def delete_customer(self):
        """A customer who never ordered asks to be forgotten (``delete()``)."""
        customer = self.pick(Customer.objects.filter(orders__isnull=True).order_by("pk"))
        if customer is None:
            return False
        with self.request(self.rng.choice(STAFF), f"/admin/shop/customer/{customer.pk}/delete/"):
            customer.delete()
        return True
