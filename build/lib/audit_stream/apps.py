from django.apps import AppConfig
from django.db.backends.signals import connection_created
from django.db.models.signals import class_prepared


def _on_class_prepared(sender, **kwargs):
    setup = getattr(sender, "_pgh_setup", None)
    if setup is not None:
        setup()


class AuditStreamConfig(AppConfig):
    name = "audit_stream"
    verbose_name = "Audit stream"
    default_auto_field = "django.db.models.BigAutoField"

    def __init__(self, *args, **kwargs):
        # Event models of apps listed before audit_stream are prepared while
        # the registry is populated, before ready(): connect now.
        class_prepared.connect(_on_class_prepared)
        super().__init__(*args, **kwargs)

    def ready(self):
        from django.db import connections

        from audit_stream import checks  # noqa: F401  (registers the checks)
        from audit_stream.context import _install

        connection_created.connect(_install)
        for connection in connections.all(initialized_only=True):
            _install(connection)
