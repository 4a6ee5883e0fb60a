"""URLs of the operator dashboard: ``path("audit-stream/", include("audit_stream.urls"))``."""

from django.urls import path

app_name = "audit_stream"

urlpatterns: list = []
