from django.contrib import admin
from django.urls import include, path

from tests.testapp import views

urlpatterns = [
    path("admin/", admin.site.urls),
    path("audit-stream/", include("audit_stream.urls")),
    path("write/", views.write),
    path("late-user/", views.late_user),
    path("async-write/", views.async_write),
    path("async-late-user/", views.async_late_user),
]
