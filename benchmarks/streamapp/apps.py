from django.apps import AppConfig


class StreamAppConfig(AppConfig):
    name = "benchmarks.streamapp"
    label = "streamapp"
    default_auto_field = "django.db.models.BigAutoField"
