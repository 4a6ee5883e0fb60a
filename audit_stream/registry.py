"""The registry of history tables: every event model by its table, the row log's two tables,
and the problems found in the declarations.

:mod:`audit_stream.tracking` fills it as event models are built (when the
apps' models modules are imported); the stream, the faces, retention, the
grants and partitions read it. It imports nothing of audit_stream, so any
layer may read it without an import cycle.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from django.db import models

__all__ = [
    "DDL_LOG_TABLE",
    "ROW_LOG_TABLE",
    "event_model",
    "event_models",
    "event_models_for",
    "problem",
    "problems",
    "register",
    "stream_tables",
]

#: The row log of ``initlogging`` (:class:`audit_stream.models.RowLog`), folded like an event table.
ROW_LOG_TABLE = "audit_stream_row_log"
#: The schema changes of logged tables (:class:`audit_stream.models.DdlLog`).
DDL_LOG_TABLE = "audit_stream_ddl_log"

#: Event table -> concrete event model. Read it; :func:`register` is the one writer.
event_models: dict[str, type[models.Model]] = {}


#: (event model label, message, hint, check id): the problems found in declarations while the
#: event models were built, reported by the system checks (audit_stream.checks).
problems: list[tuple[str, str, str, str]] = []


def problem(model_label: str, message: str, hint: str, check_id: str) -> None:
    """Note a problem of a declaration, to be reported by the checks rather than raised at import."""
    problems.append((model_label, message, hint, check_id))


def register(model: type[models.Model]) -> None:
    """Record a concrete event model under its table (a later model of the same table replaces it)."""
    event_models[model._meta.db_table] = model


def event_model(table: str) -> type[models.Model] | None:
    """The event model whose table is ``table``; ``None`` for the row log or an unknown table."""
    return event_models.get(table)


def event_models_for(model: type[models.Model]) -> list[type[models.Model]]:
    """The event models that track ``model`` (or its concrete model, for a proxy), by table name."""
    concrete = model._meta.concrete_model
    return sorted(
        (m for m in event_models.values() if m.pgh_tracked_model._meta.concrete_model is concrete),
        key=lambda m: m._meta.db_table,
    )


def stream_tables() -> list[str]:
    """Every table the stream folds: each event model's, and the row log of ``initlogging``."""
    return sorted([*event_models, ROW_LOG_TABLE])
