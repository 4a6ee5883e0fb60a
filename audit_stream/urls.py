"""URLs of the operator dashboard: ``path("audit-stream/", include("audit_stream.urls"))``."""

from django.urls import path

from audit_stream.dashboard import views

app_name = "audit_stream"

urlpatterns = [
    path("", views.overview, name="overview"),
    path("api/overview.json", views.overview_json, name="overview_json"),
    path("metrics", views.prometheus_metrics, name="metrics"),
    path("webhooks/", views.webhooks, name="webhooks"),
    path("webhooks/<int:pk>/", views.endpoint, name="endpoint"),
    path("webhooks/<int:pk>/replay-dead/", views.replay_dead, name="replay_dead"),
    path("sinks/", views.sinks, name="sinks"),
    path("sinks/<int:pk>/", views.sink, name="sink"),
    path("sinks/<int:pk>/replay-dead/", views.replay_sink_dead, name="replay_sink_dead"),
    path("messages/<uuid:pk>/", views.message, name="message"),
    path("messages/<uuid:pk>/replay/", views.replay_message, name="replay_message"),
    path("retention/", views.retention, name="retention"),
    path("changes/", views.changes, name="changes"),
    path("dashboard.css", views.stylesheet, name="stylesheet"),
]
