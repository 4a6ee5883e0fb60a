from django.contrib import admin
from django.db.models import DecimalField, F, Sum, Value
from django.db.models.functions import Coalesce

from audit_stream.admin import VersionModelAdmin
from demo.shop.models import Customer, Order, OrderLine, Product, Supplier


@admin.register(Customer)
class CustomerAdmin(VersionModelAdmin):
    list_display = ["name", "email", "created_at"]
    search_fields = ["name", "email"]
    date_hierarchy = "created_at"


@admin.register(Product)
class ProductAdmin(VersionModelAdmin):
    list_display = ["sku", "name", "category", "price", "stock"]
    list_editable = ["price", "stock"]
    list_filter = ["category"]
    search_fields = ["sku", "name"]


class OrderLineInline(admin.TabularInline):
    model = OrderLine
    autocomplete_fields = ["product"]
    extra = 0


@admin.register(Order)
class OrderAdmin(VersionModelAdmin):
    list_display = ["__str__", "customer", "status", "created_at", "order_total"]
    list_filter = ["status", "created_at"]
    list_select_related = ["customer"]
    search_fields = ["=id", "customer__name", "customer__email"]
    autocomplete_fields = ["customer"]
    date_hierarchy = "created_at"
    inlines = [OrderLineInline]

    def get_queryset(self, request):
        zero = Value(0, output_field=DecimalField(max_digits=12, decimal_places=2))
        return (
            super()
            .get_queryset(request)
            .annotate(_total=Coalesce(Sum(F("lines__quantity") * F("lines__unit_price")), zero))
        )

    @admin.display(description="total", ordering="_total")
    def order_total(self, order):
        return order._total


@admin.register(OrderLine)
class OrderLineAdmin(VersionModelAdmin):
    list_display = ["__str__", "order", "product", "quantity", "unit_price"]
    list_select_related = ["order", "product"]
    search_fields = ["=order__id", "product__name", "product__sku"]
    autocomplete_fields = ["order", "product"]


@admin.register(Supplier)
class SupplierAdmin(VersionModelAdmin):
    """No @track: the history comes from the row log of ``manage.py initlogging``."""

    list_display = ["name", "email", "lead_time_days", "rating", "active"]
    search_fields = ["name", "email"]
