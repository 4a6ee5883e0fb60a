"""Turning schema-wide logging on and off: which tables ``initlogging`` logs, and installing its functions."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from django.apps import apps
from django.db import DEFAULT_DB_ALIAS, connections, transaction

from audit_stream import config, registry, triggers
from audit_stream.registry import ROW_LOG_TABLE
from audit_stream.rowlog.functions import (
    COLUMNS_FUNCTION,
    CREATE_EVENT_TRIGGERS,
    DDL_ID_SQL,
    LOG_DDL_FUNCTION,
    LOG_DROP_FUNCTION,
    LOG_ROWS_FUNCTION,
    START_LOGGING_FUNCTION,
    STOP_LOGGING_FUNCTION,
    TRIGGERS,
    UNINSTALL_SQL,
    render,
)
from audit_stream.rowlog.names import current_schema

__all__ = [
    "TableStatus",
    "ddl_functions",
    "drop_logging",
    "init_logging",
    "install_functions",
    "refresh_ddl_functions",
]

# Every ordinary table of the schema, with what initlogging needs to decide.
_TABLES_SQL = """
SELECT c.relname,
       EXISTS (SELECT 1 FROM pg_trigger AS t
               WHERE t.tgrelid = c.oid AND t.tgname = 'audit_stream_log_insert') AS logged
FROM pg_class AS c
JOIN pg_namespace AS n ON n.oid = c.relnamespace
WHERE n.nspname = %s AND c.relkind IN ('r', 'p')
ORDER BY c.relname
"""

# Every table that carries the row-log triggers, in any schema.
_LOGGED_SQL = """
SELECT DISTINCT n.nspname || '.' || c.relname
FROM pg_trigger AS t
JOIN pg_class AS c ON c.oid = t.tgrelid
JOIN pg_namespace AS n ON n.oid = c.relnamespace
WHERE t.tgname = ANY (%s) AND NOT t.tgisinternal
ORDER BY 1
"""


@dataclass
class TableStatus:
    """What ``initlogging`` did (or, in a dry run, would do) with one table."""

    table: str
    action: str  # "logging", "already logged", "would log", "skipped: ...", "ignored: ..."

    @property
    def logged(self) -> bool:
        return self.action in ("logging", "already logged", "would log")


def _always_ignored() -> dict[str, str]:
    """Tables never logged, whatever ``IGNORE_TABLES`` says, with the reason."""
    reasons = {"django_migrations": "Django's migration history"}
    for model in apps.get_app_config("audit_stream").get_models(include_auto_created=True):
        reasons[model._meta.db_table] = "audit_stream's own table"
    for table, event_model in registry.event_models.items():
        reasons[table] = f"event table of {event_model._meta.label}"
        tracked = event_model.pgh_tracked_model._meta.db_table
        reasons.setdefault(tracked, f"tracked with @track ({event_model.pgh_tracked_model._meta.label})")
    return reasons


def _ignored_by_setting(schema: str, table: str) -> str | None:
    for pattern in config.ignore_tables():
        name = f"{schema}.{table}" if "." in pattern else table
        if fnmatch.fnmatchcase(name, pattern):
            return pattern
    return None


def ddl_functions() -> list[str]:
    """The SQL of the DDL log's functions (reinstalled by migration 0017 where they exist)."""
    wake_up = triggers.wake_up(ROW_LOG_TABLE)  # the row log's stream carries the DDL log
    return [
        render(sql.replace("{ddl_id}", DDL_ID_SQL).replace("{wake_up}", wake_up))
        for sql in (LOG_DDL_FUNCTION, LOG_DROP_FUNCTION)
    ]


def refresh_ddl_functions(using: str = DEFAULT_DB_ALIAS) -> None:
    """Recreate the DDL log's functions where ``initlogging`` installed them (migrations run it)."""
    with connections[using].cursor() as cursor:
        function = render("@schema@._audit_stream_log_ddl()")
        cursor.execute("SELECT to_regprocedure(%s) IS NOT NULL", [function])
        if cursor.fetchone()[0]:
            for sql in ddl_functions():
                cursor.execute(sql)


def install_functions(using: str = DEFAULT_DB_ALIAS) -> bool:
    """(Re)create the logging functions; install the DDL event triggers if allowed.

    Returns whether the DDL event triggers are installed: they need a
    superuser (PostgreSQL's rule), and without them renames and drops are not
    recorded (new columns are still logged).
    """
    connection = connections[using]
    with connection.cursor() as cursor:
        cursor.execute(
            render(
                LOG_ROWS_FUNCTION.replace(
                    "{after_events}", triggers.after_events(ROW_LOG_TABLE, nothing_written="_rows = 0")
                ).replace("{context_id}", triggers.CONTEXT_ID_SQL)
            )
        )
        for sql in (COLUMNS_FUNCTION, STOP_LOGGING_FUNCTION, START_LOGGING_FUNCTION):
            cursor.execute(render(sql))
        for sql in ddl_functions():
            cursor.execute(sql)
        cursor.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
        if not cursor.fetchone()[0]:
            return False
        cursor.execute(render(CREATE_EVENT_TRIGGERS))
    return True


def init_logging(
    schema: str = "public",
    *,
    tables: list[str] | None = None,
    dry_run: bool = False,
    using: str = DEFAULT_DB_ALIAS,
) -> tuple[list[TableStatus], bool]:
    """Log every table of ``schema`` that is not ignored; return each table's status.

    Idempotent: a table already logged is refreshed (its triggers follow its
    current primary key), a new table is picked up. ``tables`` restricts the
    run to those tables of the schema (the ignore rules still apply). The
    second value says whether DDL is logged (see :func:`install_functions`).
    """
    connection = connections[using]
    always = _always_ignored()
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", [schema])
        if cursor.fetchone() is None:
            raise ValueError(
                f"There is no schema {schema!r} in database {connection.settings_dict['NAME']!r}."
            )
        cursor.execute(_TABLES_SQL, [schema])
        found = cursor.fetchall()
    if tables is not None:
        missing = sorted(set(tables) - {table for table, _ in found})
        if missing:
            raise ValueError(f"No table {', '.join(map(repr, missing))} in schema {schema!r}.")
        found = [(table, logged) for table, logged in found if table in tables]
    statuses: list[TableStatus] = []
    ddl = True
    with transaction.atomic(using=using):
        if not dry_run:
            ddl = install_functions(using)
        with connection.cursor() as cursor:
            for table, logged in found:
                qualified = f"{schema}.{table}"
                reason = always.get(table) if schema == current_schema(cursor) else None
                pattern = _ignored_by_setting(schema, table)
                if reason or pattern:
                    if logged and not dry_run:  # ignored since: stop logging it
                        cursor.execute(
                            "SELECT _audit_stream_stop_logging(%s::regclass)", [_regclass(schema, table)]
                        )
                    statuses.append(
                        TableStatus(qualified, f"ignored: {reason or f'IGNORE_TABLES {pattern!r}'}")
                    )
                    continue
                if dry_run:
                    statuses.append(TableStatus(qualified, "already logged" if logged else "would log"))
                    continue
                cursor.execute("SELECT _audit_stream_start_logging(%s::regclass)", [_regclass(schema, table)])
                statuses.append(TableStatus(qualified, cursor.fetchone()[0]))
    return statuses, ddl


def drop_logging(*, using: str = DEFAULT_DB_ALIAS) -> list[str]:
    """Remove every row-log trigger, the DDL event triggers and the functions.

    The row log and DDL log are kept (they are history); returns the tables
    that were logged.
    """
    with transaction.atomic(using=using), connections[using].cursor() as cursor:
        cursor.execute(_LOGGED_SQL, [list(TRIGGERS)])
        tables = [row[0] for row in cursor.fetchall()]
        cursor.execute(UNINSTALL_SQL)
    return tables


def _regclass(schema: str, table: str) -> str:
    return f"{triggers.quote_name(schema)}.{triggers.quote_name(table)}"
