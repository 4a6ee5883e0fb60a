from django.apps import AppConfig
from django.db.backends.signals import connection_created
from django.db.models.signals import class_prepared, post_migrate


def _on_class_prepared(sender, **kwargs):
    """Set up each concrete event model as Django prepares its class (its triggers registered).

    audit_stream's own logs say how (``_pgh_setup``: append-only); every other
    subclass of :class:`audit_stream.event.Event` is an event model of
    :mod:`audit_stream.tracking`. A class that is not an event model costs one
    attribute lookup: no module of audit_stream is imported for it.
    """
    setup = getattr(sender, "_pgh_setup", None)
    if setup is not None:
        setup()
    elif hasattr(sender, "pgh_tracked_model"):  # an attribute of Event's: the cheap test first
        from audit_stream import tracking
        from audit_stream.event import Event

        if issubclass(sender, Event):
            tracking.setup_event_model(sender)


def _on_post_migrate(sender, using, **kwargs):
    """Partition the tables PARTITIONS declares, and create partitions ahead (audit_stream.partitions)."""
    from audit_stream import partitions

    partitions.sync(using=using)


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

        from audit_stream import autodetector, checks  # noqa: F401  (checks: registers the checks)
        from audit_stream.context import _install
        from audit_stream.tracking import install_create_event_functions

        connection_created.connect(_install)
        # Manual events go through functions the owner installs after migrating.
        post_migrate.connect(install_create_event_functions, sender=self)
        post_migrate.connect(_on_post_migrate, sender=self)
        autodetector.install()  # a renamed event table gets its triggers after the rename
        for connection in connections.all(initialized_only=True):
            _install(connection)
