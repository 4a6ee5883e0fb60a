"""What an endpoint's filters may name: models and event labels the change feed carries.

``Change.model`` is ``"app_label.model"`` (lower case) for tracked models and
for tables logged by ``initlogging`` that belong to a model (else
``"schema.table"``); ``Change.label`` is a declared event label, or
``insert``/``update``/``delete`` for the row log. A filter naming anything
else would silently match nothing, so it is refused.
"""

from __future__ import annotations

from django.db import DEFAULT_DB_ALIAS

from audit_stream import registry

__all__ = ["check", "known_labels", "known_models"]

_ROW_LOG_LABELS = {"insert", "update", "delete"}


def known_models(using: str = DEFAULT_DB_ALIAS) -> list[str]:
    """``Change.model`` of every tracked or logged model."""
    from audit_stream import rowlog
    from audit_stream.models import LoggedTable

    labels = {m.pgh_tracked_model._meta.label_lower for m in registry.event_models.values()}
    logged = [f"{t.schema_name}.{t.table_name}" for t in LoggedTable.objects.using(using)]
    if logged:
        names = rowlog.models_by_table(using=using)
        labels |= {names.get(table, table) for table in logged}
    return sorted(labels)


def known_labels(using: str = DEFAULT_DB_ALIAS) -> list[str]:
    """Every event label declared on a tracked model (and the row log's, when logging is on)."""
    from audit_stream.models import LoggedTable

    labels = {event.label for m in registry.event_models.values() for event in m.pgh_events}
    if LoggedTable.objects.using(using).exists():
        labels |= _ROW_LOG_LABELS
    return sorted(labels)


def check(models: list[str], labels: list[str], using: str = DEFAULT_DB_ALIAS) -> list[str]:
    """The problems with these filters, each a sentence naming the choices (empty: none)."""
    problems = []
    unknown = [m for m in models if m.lower() not in known_models(using)]
    if unknown:
        problems.append(
            f"No tracked or logged model is called {', '.join(map(repr, unknown))}; write"
            f' "app_label.model", one of: {", ".join(known_models(using)) or "(none tracked yet)"}.'
        )
    unknown = [label for label in labels if label not in known_labels(using)]
    if unknown:
        problems.append(
            f"No event has the label {', '.join(map(repr, unknown))}; labels in use:"
            f" {', '.join(known_labels(using)) or '(none yet)'}."
        )
    return problems
