"""``manage.py demo_setup``: the admin account and a small catalogue, once."""

from decimal import Decimal

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction
from django.urls import reverse

import audit_stream
from audit_stream import rowlog
from demo.shop.models import Customer, Product, Supplier

USERNAME = "admin"
PASSWORD = "admin"

PRODUCTS = [
    ("COF-ETH-250", "Ethiopia Yirgacheffe, 250 g", Product.Category.COFFEE, "11.50", 120),
    ("COF-COL-250", "Colombia Huila, 250 g", Product.Category.COFFEE, "9.90", 150),
    ("COF-ESP-1K", "House espresso blend, 1 kg", Product.Category.COFFEE, "27.00", 60),
    ("COF-DEC-250", "Swiss water decaf, 250 g", Product.Category.COFFEE, "10.50", 40),
    ("TEA-SEN-100", "Sencha, 100 g", Product.Category.TEA, "8.00", 80),
    ("TEA-ASS-250", "Assam breakfast, 250 g", Product.Category.TEA, "7.50", 90),
    ("TEA-EAR-100", "Earl Grey, 100 g", Product.Category.TEA, "6.90", 70),
    ("EQP-V60", "V60 dripper", Product.Category.EQUIPMENT, "24.00", 25),
    ("EQP-GRN-HND", "Hand grinder", Product.Category.EQUIPMENT, "79.00", 12),
    ("EQP-KTL", "Gooseneck kettle", Product.Category.EQUIPMENT, "45.00", 15),
    ("SNK-BIS", "Almond biscotti", Product.Category.SNACKS, "4.20", 200),
    ("SNK-CHO", "Dark chocolate, 70 %", Product.Category.SNACKS, "3.80", 180),
]

SUPPLIERS = [
    ("Highland Growers Co-op", "orders@highland.example.com", 21, "4.5"),
    ("Leaf & Kettle Trading", "sales@leafkettle.example.org", 10, "4.0"),
    ("Brewgear Wholesale", "trade@brewgear.example.net", 5, "3.5"),
]

CUSTOMERS = [
    ("Ada Lovelace", "ada@example.com"),
    ("Grace Hopper", "grace@example.com"),
    ("Alan Turing", "alan@example.org"),
    ("Katherine Johnson", "katherine@example.net"),
    ("Edsger Dijkstra", "edsger@example.org"),
]


class Command(BaseCommand):
    help = (
        "Prepare the demo: create the superuser admin/admin if it is missing, seed products,"
        " customers and suppliers if the shop has none, and start schema-wide logging"
        " (initlogging) of the tables @track does not cover. Safe to run again."
    )

    def handle(self, *args, **options):
        self.create_superuser()
        with audit_stream.context(user="demo_setup", url="manage.py demo_setup"):
            self.seed(
                Product,
                [Product(sku=s, name=n, category=c, price=Decimal(p), stock=q) for s, n, c, p, q in PRODUCTS],
            )
            self.seed(Customer, [Customer(name=name, email=email) for name, email in CUSTOMERS])
        # Suppliers are not @track'ed: log their table (and the other untracked ones) schema-wide,
        # before seeding them, so that their history starts with their insert.
        statuses, _ = rowlog.init_logging()
        logged = [s.table for s in statuses if s.logged]
        self.stdout.write(f"initlogging: {len(logged)} tables logged schema-wide ({', '.join(logged)}).")
        with audit_stream.context(user="demo_setup", url="manage.py demo_setup"):
            self.seed(
                Supplier,
                [Supplier(name=n, email=e, lead_time_days=d, rating=Decimal(r)) for n, e, d, r in SUPPLIERS],
            )
        login_url = "http://127.0.0.1:8000" + reverse("admin:login")
        self.stdout.write(f"Log in at {login_url} as {USERNAME} / {PASSWORD}.")

    def create_superuser(self):
        User = get_user_model()
        if User._default_manager.filter(username=USERNAME).exists():
            self.stdout.write(f"Superuser {USERNAME!r} already exists.")
        else:
            User._default_manager.create_superuser(USERNAME, f"{USERNAME}@example.com", PASSWORD)
            self.stdout.write(self.style.SUCCESS(f"Created superuser {USERNAME!r} (password {PASSWORD!r})."))

    def seed(self, model, objs):
        plural = model._meta.verbose_name_plural
        with transaction.atomic():
            if model._default_manager.exists():
                self.stdout.write(f"The shop already has {plural}: not seeding them.")
                return
            model._default_manager.bulk_create(objs)
        self.stdout.write(self.style.SUCCESS(f"Created {len(objs)} {plural}."))
