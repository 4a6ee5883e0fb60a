"""Which model a logged table is, and back: the names the row log and the change feed give tables."""

from __future__ import annotations

from dataclasses import dataclass

from django.apps import apps
from django.db import DEFAULT_DB_ALIAS, connections
from django.db import models as django_models

from audit_stream import triggers
from audit_stream.rowlog.functions import TRIGGERS

__all__ = [
    "StreamNames",
    "current_schema",
    "is_logged",
    "logged_table",
    "models_by_table",
    "stream_names",
    "table_names",
]


def current_schema(cursor) -> str:
    """The schema unqualified table names resolve to (the first of the search path)."""
    cursor.execute("SELECT current_schema()")
    return cursor.fetchone()[0]


def logged_table(model: type[django_models.Model], *, using: str = DEFAULT_DB_ALIAS) -> str:
    """The name the row log gives ``model``'s table: ``"schema.table"``."""
    with connections[using].cursor() as cursor:
        schema = current_schema(cursor)
    return f"{schema}.{model._meta.concrete_model._meta.db_table}"


def table_names(model: type[django_models.Model], *, using: str = DEFAULT_DB_ALIAS) -> list[str]:
    """``model``'s table under its current name and every former name the DDL log knows."""
    from audit_stream.models import DdlLog

    names = [logged_table(model, using=using)]
    for name in names:
        for former in (
            DdlLog.objects.using(using)
            .filter(pgh_label="rename", logged_table=name)
            .values_list("former_name", flat=True)
        ):
            if former not in names:
                names.append(former)
    return names


def is_logged(model: type[django_models.Model], *, using: str = DEFAULT_DB_ALIAS) -> bool:
    """Whether ``initlogging`` logs ``model``'s table now."""
    with connections[using].cursor() as cursor:
        cursor.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = %s AND tgrelid = to_regclass(%s))",
            [TRIGGERS[0], triggers.quote_name(model._meta.concrete_model._meta.db_table)],
        )
        return cursor.fetchone()[0]


def models_by_table(*, using: str = DEFAULT_DB_ALIAS) -> dict[str, str]:
    """``{"schema.table": "app_label.model"}`` for every installed model (the change feed's names)."""
    with connections[using].cursor() as cursor:
        schema = current_schema(cursor)
    return {
        f"{schema}.{model._meta.db_table}": model._meta.label_lower
        for model in apps.get_models(include_auto_created=True)
        if not model._meta.proxy
    }


@dataclass
class StreamNames:
    """How the fold names the row log's tables, renames included (:func:`stream_names`)."""

    models: dict[str, str]  # every name a table has or had -> its model label (or current name)
    current: dict[str, str]  # every name a table has or had -> the name it has now
    aliases: list[tuple[str, str]]  # (label, a label its changes were folded under before a rename)

    def params(self) -> dict:
        """The arrays the row log's fold query reads."""
        tables = list(self.models)
        return {
            "tables": tables,
            "models": [self.models[t] for t in tables],
            "current_tables": [self.current[t] for t in tables],
            "alias_of": [label for label, _ in self.aliases],
            "aliases": [alias for _, alias in self.aliases],
        }


def stream_names(*, using: str = DEFAULT_DB_ALIAS) -> StreamNames:
    """Name each logged table as it is called now, whatever it was called when an entry was logged.

    A table's model label (``models_by_table``), or its ``"schema.table"`` name
    for a table without a model. The DDL log's renames lead a former name to
    the current one, so entries logged before a rename and folded after it
    belong to the same object as later ones; the labels the table's changes got
    before (its former names) are its aliases, where the fold finds an
    object's last known state.
    """
    from audit_stream.models import DdlLog, LoggedTable

    labels = models_by_table(using=using)
    logged = LoggedTable.objects.using(using).values_list("schema_name", "table_name")
    now = set(labels) | {f"{schema}.{table}" for schema, table in logged}
    renames = DdlLog.objects.using(using).filter(pgh_label="rename").order_by("pgh_id")
    renamed_to = dict(renames.values_list("former_name", "logged_table"))  # the latest rename wins

    def current(name: str) -> str:
        seen = set()
        while name not in now and name in renamed_to and name not in seen:
            seen.add(name)
            name = renamed_to[name]
        return name

    names = StreamNames(models={}, current={}, aliases=[])
    for name in sorted(set(labels) | set(renamed_to) | now):
        names.current[name] = current(name)
        names.models[name] = labels.get(names.current[name], names.current[name])
        if names.current[name] != name and names.models[name] != name:
            names.aliases.append((names.models[name], name))
    return names
