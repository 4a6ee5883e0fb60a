from django.apps import AppConfig


class PerfAppConfig(AppConfig):
    name = "benchmarks.perfapp"
    label = "perfapp"
    default_auto_field = "django.db.models.BigAutoField"
