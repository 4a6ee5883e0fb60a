"""URLs of the demo site: the admin, at the root and under /admin/, and the dashboard under /audit-stream/."""

from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView

urlpatterns = [
    path("", RedirectView.as_view(pattern_name="admin:index", permanent=False)),
    path("admin/", admin.site.urls),
    path("audit-stream/", include("audit_stream.urls")),
]
