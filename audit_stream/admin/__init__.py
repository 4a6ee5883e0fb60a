"""Admin: object history with revert and restore, contexts, events, the change feed, webhooks.

``VersionModelAdmin`` (or ``VersionAdminMixin``) gives a model's admin a
per-object history page (time, label, user and context, field-level diffs),
"Revert to this version" with a confirmation page, and "Restore" for deleted
objects::

    from audit_stream.admin import VersionModelAdmin

    admin.site.register(Product, VersionModelAdmin)

Importing this package (Django's admin autodiscovery does) registers the
admin pages of audit_stream's own models and a read-only page for every
event model. One concept a module:

* :mod:`~audit_stream.admin.versions`: the History page, revert, restore, as-of, deleted objects;
* :mod:`~audit_stream.admin.entries`: history entries as the pages show them;
* :mod:`~audit_stream.admin.deleted`: finding deleted objects' last recorded states;
* :mod:`~audit_stream.admin.logs`: contexts, the change feed, the row log and the DDL log;
* :mod:`~audit_stream.admin.events`: the event models' read-only pages;
* :mod:`~audit_stream.admin.webhooks`: endpoints and messages (sinks: :mod:`audit_stream.sinks.admin`);
* :mod:`~audit_stream.admin.changelists`: changelists that cost a page at any history size;
* :mod:`~audit_stream.admin.undo`: undoing a context (a request) from its page;
* :mod:`~audit_stream.admin.readonly`: the read-only base and its helpers.
"""

from __future__ import annotations

from audit_stream.admin import logs, webhooks  # noqa: F401 (registers their pages)
from audit_stream.admin.events import EventAdmin, register_event_admins
from audit_stream.admin.readonly import ReadOnlyAdmin
from audit_stream.admin.versions import VersionAdminMixin, VersionModelAdmin
from audit_stream.admin.webhooks import WebhookEndpointForm
from audit_stream.sinks import admin as _sinks_admin  # noqa: F401 (registers the sinks' pages)

__all__ = [
    "EventAdmin",
    "ReadOnlyAdmin",
    "VersionAdminMixin",
    "VersionModelAdmin",
    "WebhookEndpointForm",
    "register_event_admins",
]

register_event_admins()
