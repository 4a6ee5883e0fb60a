from django.contrib import admin

from audit_stream.admin import VersionModelAdmin
from tests.testapp.models import Book, Customer, Order, Patient, Product, Supplier


@admin.register(Product)
class ProductAdmin(VersionModelAdmin):
    list_display = ["name", "price", "stock"]


@admin.register(Order)
class OrderAdmin(VersionModelAdmin):
    pass


admin.site.register(Customer)


@admin.register(Supplier)
class SupplierAdmin(VersionModelAdmin):
    """No @track: history comes from the row log of ``initlogging``."""


@admin.register(Book)
class BookAdmin(VersionModelAdmin):
    """Tracked with its tags (m2m_fields): history, "view as of this version"."""


@admin.register(Patient)
class PatientAdmin(VersionModelAdmin):
    """Masked fields: the history shows the mask (tests/test_masking.py)."""
