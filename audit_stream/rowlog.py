"""Schema-wide logging without model changes (django-pgMemento's ``initlogging``).

``manage.py initlogging`` puts four statement-level triggers (insert, update,
delete, truncate) on every table of a schema that is not ignored; they all run one
generic function, :data:`LOG_ROWS_FUNCTION`, which writes into one shared
table, ``audit_stream_row_log`` (:class:`audit_stream.models.RowLog`). Rows
are recorded as JSONB (``to_jsonb(row)``), so a column added later is logged
without running ``initlogging`` again.

A DDL event trigger (:data:`LOG_DDL_FUNCTION`, :data:`LOG_DROP_FUNCTION`)
records ``ALTER TABLE`` (renames and column changes) and ``DROP TABLE`` of
logged tables in ``audit_stream_ddl_log``, with the columns before and after,
so old row logs stay readable; when a primary key column is renamed it moves
the triggers to the new name.

The row log feeds the same stream as event tables (fold, change feed,
webhooks, retention) and the same admin history, revert and restore.

Everything here is SQL written out once. The functions are (re)created by
``initlogging``, which is idempotent, and dropped by ``droplogging``. Like every
function audit_stream installs, they run as their owner (``SECURITY DEFINER``)
with a pinned ``search_path`` and name audit_stream's tables with their schema
(``@schema@`` below, see :func:`_render`); ``EXECUTE`` on the two that start
and stop logging is revoked from ``PUBLIC``, so the application's runtime role
cannot switch logging off.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from django.apps import apps
from django.db import DEFAULT_DB_ALIAS, connections, transaction
from django.db import models as django_models

from audit_stream import config, tracking, triggers

__all__ = [
    "ROW_LOG_TABLE",
    "StreamNames",
    "TableStatus",
    "drop_logging",
    "init_logging",
    "is_logged",
    "logged_table",
    "stream_names",
    "table_names",
]

ROW_LOG_TABLE = "audit_stream_row_log"
DDL_LOG_TABLE = "audit_stream_ddl_log"

# Names of the triggers initlogging puts on each logged table.
TRIGGERS = (
    "audit_stream_log_insert",
    "audit_stream_log_update",
    "audit_stream_log_delete",
    "audit_stream_log_truncate",
)
EVENT_TRIGGERS = ("audit_stream_log_ddl", "audit_stream_log_drop")

# The generic row-log trigger function ({context_id}: triggers.CONTEXT_ID_SQL,
# {after_events}: triggers.after_events). TG_ARGV[0] is the table's primary key
# column. Statement level, over the transition tables (_old, _new): one
# INSERT ... SELECT per statement, whatever the number of rows, and no
# EXCEPTION block (see audit_stream.triggers).
#
# SET plan_cache_mode: the statements below use TG_ARGV and TG_TABLE_NAME, so
# PL/pgSQL sends them as parameterised queries; by default PostgreSQL then
# re-plans some calls (+35 us per single-row statement, BENCHMARKS.md "Plan
# cache"). The generic plan is right for every call, so always use it.
#
# PL/pgSQL compiles a trigger function once per trigger, so each table gets its
# own cached plans for its own row type.
LOG_ROWS_FUNCTION = """
CREATE OR REPLACE FUNCTION @schema@._audit_stream_log_rows()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = @search_path@
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    _context_id uuid;
    _same text;
    _rows bigint;
BEGIN
    IF TG_OP = 'INSERT' THEN
        -- The whole new row.
        INSERT INTO @schema@.audit_stream_row_log
            (pgh_label, pgh_xid, logged_table, pgh_obj_id, pgh_context_id, new_data)
        SELECT 'insert', pg_current_xact_id()::text::bigint, TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME,
               r.data ->> TG_ARGV[0],
               (SELECT {context_id}),
               r.data
        FROM (SELECT to_jsonb(n) AS data FROM _new AS n) AS r;
        GET DIAGNOSTICS _rows = ROW_COUNT;
    ELSIF TG_OP = 'UPDATE' THEN
        -- Only the columns that changed, before and after. Old and new rows
        -- are paired by primary key; a row whose key changed is logged as the
        -- delete of the old key and the insert of the new one. An update that
        -- changes nothing is not logged.
        IF (SELECT count(*) FROM (SELECT FROM _new LIMIT 11) AS few) <= 10 THEN
            -- A few rows (a save()): compare the rows as JSONB, key by key.
            -- Planned once per table and reused (OFFSET 0 keeps to_jsonb from
            -- being computed again at every reference).
            INSERT INTO @schema@.audit_stream_row_log
                (pgh_label, pgh_xid, logged_table, pgh_obj_id, pgh_context_id, old_data, new_data)
            SELECT CASE WHEN o.pk IS NULL THEN 'insert' WHEN n.pk IS NULL THEN 'delete' ELSE 'update' END,
                   pg_current_xact_id()::text::bigint, TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME,
                   coalesce(n.pk, o.pk),
                   (SELECT {context_id}),
                   CASE WHEN n.pk IS NULL THEN o.data WHEN o.pk IS NOT NULL THEN d.old END,
                   CASE WHEN o.pk IS NULL THEN n.data WHEN n.pk IS NOT NULL THEN d.new END
            FROM (SELECT r.data, r.data ->> TG_ARGV[0] AS pk
                  FROM (SELECT to_jsonb(x) AS data FROM _old AS x OFFSET 0) AS r) AS o
            FULL JOIN (SELECT r.data, r.data ->> TG_ARGV[0] AS pk
                       FROM (SELECT to_jsonb(x) AS data FROM _new AS x OFFSET 0) AS r) AS n
                ON n.pk = o.pk
            LEFT JOIN LATERAL (
                SELECT jsonb_object_agg(c.key, o.data -> c.key) AS old,
                       jsonb_object_agg(c.key, c.value) AS new
                FROM jsonb_each(n.data) AS c
                WHERE o.data -> c.key IS DISTINCT FROM c.value
            ) AS d ON o.pk IS NOT NULL AND n.pk IS NOT NULL
            WHERE o.pk IS NULL OR n.pk IS NULL OR d.new IS NOT NULL;
            GET DIAGNOSTICS _rows = ROW_COUNT;
        ELSE
            -- Many rows: compare typed columns, in a statement written for the
            -- table's columns as they are now (read from the catalog, once per
            -- statement); EXECUTE plans it each time, which many rows repay.
            -- A type without an equality operator (json, xml, point...) is
            -- compared as text.
            SELECT string_agg(
                       format(CASE WHEN EXISTS (SELECT FROM pg_operator AS op
                                                WHERE op.oprname = '=' AND op.oprleft = a.atttypid
                                                  AND op.oprright = a.atttypid)
                                   THEN 'CASE WHEN o.%1$I IS NOT DISTINCT FROM n.%1$I THEN %1$L END'
                                   ELSE 'CASE WHEN o.%1$I::text IS NOT DISTINCT FROM n.%1$I::text'
                                        ' THEN %1$L END'
                              END, a.attname),
                       ', ' ORDER BY a.attnum)
            INTO _same
            FROM pg_attribute AS a
            WHERE a.attrelid = TG_RELID AND a.attnum > 0 AND NOT a.attisdropped;
            EXECUTE format($update$
                INSERT INTO @schema@.audit_stream_row_log
                    (pgh_label, pgh_xid, logged_table, pgh_obj_id, pgh_context_id, old_data, new_data)
                SELECT CASE WHEN o.%1$I IS NULL THEN 'insert' WHEN n.%1$I IS NULL THEN 'delete'
                            ELSE 'update' END,
                       pg_current_xact_id()::text::bigint, $1, coalesce(n.%1$I, o.%1$I)::text,
                       (SELECT {context_id}),
                       CASE WHEN n.%1$I IS NULL THEN to_jsonb(o)
                            WHEN o.%1$I IS NOT NULL THEN to_jsonb(o) - u.same END,
                       CASE WHEN o.%1$I IS NULL THEN to_jsonb(n)
                            WHEN n.%1$I IS NOT NULL THEN to_jsonb(n) - u.same END
                FROM _old AS o
                FULL JOIN _new AS n ON n.%1$I = o.%1$I
                CROSS JOIN LATERAL (SELECT array_remove(ARRAY[%2$s], NULL) AS same) AS u
                WHERE o.%1$I IS NULL OR n.%1$I IS NULL OR cardinality(u.same) < %3$s
            $update$, TG_ARGV[0], _same,
                (SELECT count(*) FROM pg_attribute AS a
                 WHERE a.attrelid = TG_RELID AND a.attnum > 0 AND NOT a.attisdropped))
            USING TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME;
            GET DIAGNOSTICS _rows = ROW_COUNT;
        END IF;
    ELSIF TG_OP = 'TRUNCATE' THEN
        -- Every row, as deleted, before TRUNCATE removes it (as pgMemento does):
        -- TRUNCATE fires no row-level or DELETE trigger. It reads the table, so
        -- a TRUNCATE of a logged table costs what a DELETE of every row costs.
        EXECUTE format($truncate$
            INSERT INTO @schema@.audit_stream_row_log
                (pgh_label, pgh_xid, logged_table, pgh_obj_id, pgh_context_id, old_data)
            SELECT 'delete', pg_current_xact_id()::text::bigint, $1, r.data ->> $2,
                   (SELECT {context_id}), r.data
            FROM (SELECT to_jsonb(t) AS data FROM %s AS t OFFSET 0) AS r
        $truncate$, TG_RELID::regclass)
        USING TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME, TG_ARGV[0];
        GET DIAGNOSTICS _rows = ROW_COUNT;
    ELSE
        -- The whole old row.
        INSERT INTO @schema@.audit_stream_row_log
            (pgh_label, pgh_xid, logged_table, pgh_obj_id, pgh_context_id, old_data)
        SELECT 'delete', pg_current_xact_id()::text::bigint, TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME,
               r.data ->> TG_ARGV[0],
               (SELECT {context_id}),
               r.data
        FROM (SELECT to_jsonb(o) AS data FROM _old AS o) AS r;
        GET DIAGNOSTICS _rows = ROW_COUNT;
    END IF;
    {after_events}
END;
$$;
"""

# The columns of a table as the DDL log records them.
COLUMNS_FUNCTION = """
CREATE OR REPLACE FUNCTION @schema@._audit_stream_columns(_rel oid)
RETURNS jsonb LANGUAGE sql STABLE SECURITY DEFINER SET search_path = @search_path@ AS $$
    SELECT coalesce(jsonb_agg(jsonb_build_object('name', a.attname,
                                                 'type', format_type(a.atttypid, a.atttypmod))
                              ORDER BY a.attnum), '[]')
    FROM pg_attribute AS a
    WHERE a.attrelid = _rel AND a.attnum > 0 AND NOT a.attisdropped
$$;
REVOKE EXECUTE ON FUNCTION @schema@._audit_stream_columns(oid) FROM PUBLIC;
"""

# Start (or refresh) logging one table: returns what it did, for initlogging's
# report. Tables it cannot log are left without triggers, with the reason.
START_LOGGING_FUNCTION = """
CREATE OR REPLACE FUNCTION @schema@._audit_stream_start_logging(_rel regclass)
RETURNS text LANGUAGE plpgsql SECURITY DEFINER SET search_path = @search_path@ AS $$
DECLARE
    _pk text[];
    _kind "char";
    _is_partition boolean;
    _previous text;
    _reason text;
BEGIN
    SELECT c.relkind, c.relispartition INTO _kind, _is_partition FROM pg_class AS c WHERE c.oid = _rel;
    SELECT array_agg(a.attname::text ORDER BY a.attnum) INTO _pk
    FROM pg_index AS i
    JOIN pg_attribute AS a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
    WHERE i.indrelid = _rel AND i.indisprimary;

    IF _kind = 'p' OR _is_partition THEN
        _reason := 'partitioned tables are not supported; track the model with @track instead';
    ELSIF _pk IS NULL THEN
        _reason := 'no primary key (the log identifies rows by it); add one, or ignore the table';
    ELSIF cardinality(_pk) > 1 THEN
        _reason := 'composite primary key (' || array_to_string(_pk, ', ') || ') is not supported';
    END IF;
    IF _reason IS NOT NULL THEN
        PERFORM @schema@._audit_stream_stop_logging(_rel);
        RETURN 'skipped: ' || _reason;
    END IF;

    SELECT pk_column INTO _previous FROM @schema@.audit_stream_logged_table WHERE relid = _rel::oid;
    EXECUTE format(
        'CREATE OR REPLACE TRIGGER audit_stream_log_insert AFTER INSERT ON %s'
        ' REFERENCING NEW TABLE AS _new FOR EACH STATEMENT'
        ' EXECUTE FUNCTION @schema@._audit_stream_log_rows(%L)',
        _rel, _pk[1]);
    EXECUTE format(
        'CREATE OR REPLACE TRIGGER audit_stream_log_update AFTER UPDATE ON %s'
        ' REFERENCING OLD TABLE AS _old NEW TABLE AS _new'
        ' FOR EACH STATEMENT EXECUTE FUNCTION @schema@._audit_stream_log_rows(%L)',
        _rel, _pk[1]);
    EXECUTE format(
        'CREATE OR REPLACE TRIGGER audit_stream_log_delete AFTER DELETE ON %s'
        ' REFERENCING OLD TABLE AS _old FOR EACH STATEMENT'
        ' EXECUTE FUNCTION @schema@._audit_stream_log_rows(%L)',
        _rel, _pk[1]);
    -- TRUNCATE fires no row trigger: log its rows before they go.
    EXECUTE format(
        'CREATE OR REPLACE TRIGGER audit_stream_log_truncate BEFORE TRUNCATE ON %s'
        ' FOR EACH STATEMENT EXECUTE FUNCTION @schema@._audit_stream_log_rows(%L)',
        _rel, _pk[1]);
    INSERT INTO @schema@.audit_stream_logged_table
        (relid, schema_name, table_name, pk_column, columns, logged_at)
    SELECT c.oid, n.nspname, c.relname, _pk[1], @schema@._audit_stream_columns(c.oid), now()
    FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace
    WHERE c.oid = _rel
    ON CONFLICT (relid) DO UPDATE
        SET schema_name = EXCLUDED.schema_name, table_name = EXCLUDED.table_name,
            pk_column = EXCLUDED.pk_column, columns = EXCLUDED.columns;
    RETURN CASE WHEN _previous IS NULL THEN 'logging' ELSE 'already logged' END;
END;
$$;
REVOKE EXECUTE ON FUNCTION @schema@._audit_stream_start_logging(regclass) FROM PUBLIC;
"""

STOP_LOGGING_FUNCTION = """
CREATE OR REPLACE FUNCTION @schema@._audit_stream_stop_logging(_rel regclass)
RETURNS boolean LANGUAGE plpgsql SECURITY DEFINER SET search_path = @search_path@ AS $$
BEGIN
    EXECUTE format('DROP TRIGGER IF EXISTS audit_stream_log_insert ON %s', _rel);
    EXECUTE format('DROP TRIGGER IF EXISTS audit_stream_log_update ON %s', _rel);
    EXECUTE format('DROP TRIGGER IF EXISTS audit_stream_log_delete ON %s', _rel);
    EXECUTE format('DROP TRIGGER IF EXISTS audit_stream_log_truncate ON %s', _rel);
    DELETE FROM @schema@.audit_stream_logged_table WHERE relid = _rel::oid;
    RETURN FOUND;
END;
$$;
REVOKE EXECUTE ON FUNCTION @schema@._audit_stream_stop_logging(regclass) FROM PUBLIC;
"""

# A DDL log entry takes its pgh_id from the row log's sequence, so entries of
# both logs share one order: the order of the schema change and the row
# changes of its table (ALTER TABLE holds the table's exclusive lock until
# commit, so every row change numbered before it committed before it, and
# every row change after it waits). The fold merges both logs in this order.
DDL_ID_SQL = "nextval(pg_get_serial_sequence('@schema@.audit_stream_row_log', 'pgh_id'))"

# After ALTER TABLE on a logged table: record the command with the columns
# before and after (and the former name, for a rename), then bring the
# registry and, if the primary key moved, the triggers up to date.
LOG_DDL_FUNCTION = """
CREATE OR REPLACE FUNCTION @schema@._audit_stream_log_ddl()
RETURNS event_trigger LANGUAGE plpgsql SECURITY DEFINER SET search_path = @search_path@ AS $$
DECLARE
    _command record;
    _known @schema@.audit_stream_logged_table;
    _name text;
    _columns jsonb;
    _logged boolean := false;
BEGIN
    IF to_regclass('@schema@.audit_stream_logged_table') IS NULL THEN
        RETURN;  -- audit_stream's tables are not there (being migrated away)
    END IF;
    FOR _command IN
        -- (RENAME COLUMN reports the column: its objid is the table's too)
        SELECT DISTINCT objid FROM pg_event_trigger_ddl_commands()
        WHERE object_type IN ('table', 'table column')
    LOOP
        SELECT * INTO _known FROM @schema@.audit_stream_logged_table WHERE relid = _command.objid;
        CONTINUE WHEN NOT FOUND;
        SELECT n.nspname || '.' || c.relname INTO _name
        FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace
        WHERE c.oid = _command.objid;
        _columns := @schema@._audit_stream_columns(_command.objid);
        INSERT INTO @schema@.audit_stream_ddl_log
            (pgh_id, pgh_label, logged_table, former_name, command, columns_before, columns_after)
        VALUES (
            {ddl_id},
            CASE WHEN _name <> _known.schema_name || '.' || _known.table_name THEN 'rename' ELSE 'alter' END,
            _name,
            nullif(_known.schema_name || '.' || _known.table_name, _name),
            current_query(), _known.columns, _columns
        );
        _logged := true;
        -- Refreshes the registry; moves the triggers if the key column changed.
        PERFORM @schema@._audit_stream_start_logging(_command.objid::regclass);
    END LOOP;
    IF _logged THEN  -- a schema-only transaction wakes the worker too
        {wake_up}
    END IF;
END;
$$;
"""

LOG_DROP_FUNCTION = """
CREATE OR REPLACE FUNCTION @schema@._audit_stream_log_drop()
RETURNS event_trigger LANGUAGE plpgsql SECURITY DEFINER SET search_path = @search_path@ AS $$
DECLARE
    _dropped record;
    _known @schema@.audit_stream_logged_table;
    _logged boolean := false;
BEGIN
    IF to_regclass('@schema@.audit_stream_logged_table') IS NULL THEN
        RETURN;
    END IF;
    FOR _dropped IN SELECT objid FROM pg_event_trigger_dropped_objects() WHERE object_type = 'table' LOOP
        DELETE FROM @schema@.audit_stream_logged_table WHERE relid = _dropped.objid RETURNING * INTO _known;
        CONTINUE WHEN NOT FOUND;
        INSERT INTO @schema@.audit_stream_ddl_log
            (pgh_id, pgh_label, logged_table, command, columns_before, columns_after)
        VALUES ({ddl_id}, 'drop', _known.schema_name || '.' || _known.table_name, current_query(),
                _known.columns, '[]');
        _logged := true;
    END LOOP;
    IF _logged THEN
        {wake_up}
    END IF;
END;
$$;
"""

CREATE_EVENT_TRIGGERS = """
DROP EVENT TRIGGER IF EXISTS audit_stream_log_ddl;
CREATE EVENT TRIGGER audit_stream_log_ddl ON ddl_command_end WHEN TAG IN ('ALTER TABLE')
    EXECUTE FUNCTION @schema@._audit_stream_log_ddl();
DROP EVENT TRIGGER IF EXISTS audit_stream_log_drop;
CREATE EVENT TRIGGER audit_stream_log_drop ON sql_drop
    EXECUTE FUNCTION @schema@._audit_stream_log_drop();
"""

# Everything initlogging installed, from every table; the logs stay (history).
UNINSTALL_SQL = """
DO $$
DECLARE
    _trigger record;
BEGIN
    FOR _trigger IN
        SELECT t.tgrelid::regclass AS rel, t.tgname FROM pg_trigger AS t
        WHERE t.tgname IN ('audit_stream_log_insert', 'audit_stream_log_update', 'audit_stream_log_delete',
                           'audit_stream_log_truncate')
          AND NOT t.tgisinternal
    LOOP
        EXECUTE format('DROP TRIGGER %I ON %s', _trigger.tgname, _trigger.rel);
    END LOOP;
    IF to_regclass('audit_stream_logged_table') IS NOT NULL THEN
        DELETE FROM audit_stream_logged_table;
    END IF;
END;
$$;
DROP EVENT TRIGGER IF EXISTS audit_stream_log_ddl;
DROP EVENT TRIGGER IF EXISTS audit_stream_log_drop;
DROP FUNCTION IF EXISTS _audit_stream_log_ddl();
DROP FUNCTION IF EXISTS _audit_stream_log_drop();
DROP FUNCTION IF EXISTS _audit_stream_start_logging(regclass);
DROP FUNCTION IF EXISTS _audit_stream_stop_logging(regclass);
DROP FUNCTION IF EXISTS _audit_stream_columns(oid);
DROP FUNCTION IF EXISTS _audit_stream_log_rows();
"""

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
    for table, event_model in tracking._event_models.items():
        reasons[table] = f"event table of {event_model._meta.label}"
        tracked = tracking._trigger_target(event_model)._meta.db_table
        reasons.setdefault(tracked, f"tracked with @track ({event_model.pgh_tracked_model._meta.label})")
    return reasons


def _ignored_by_setting(schema: str, table: str) -> str | None:
    for pattern in config.ignore_tables():
        name = f"{schema}.{table}" if "." in pattern else table
        if fnmatch.fnmatchcase(name, pattern):
            return pattern
    return None


def _render(sql: str) -> str:
    """``sql`` with audit_stream's schema and the pinned search path filled in."""
    return sql.replace("@schema@", triggers.quote_name(config.schema())).replace(
        "@search_path@", triggers.search_path()
    )


def ddl_functions() -> list[str]:
    """The SQL of the DDL log's functions (reinstalled by migration 0017 where they exist)."""
    wake_up = triggers.wake_up(ROW_LOG_TABLE)  # the row log's stream carries the DDL log
    return [
        _render(sql.replace("{ddl_id}", DDL_ID_SQL).replace("{wake_up}", wake_up))
        for sql in (LOG_DDL_FUNCTION, LOG_DROP_FUNCTION)
    ]


def refresh_ddl_functions(using: str = DEFAULT_DB_ALIAS) -> None:
    """Recreate the DDL log's functions where ``initlogging`` installed them (migrations run it)."""
    with connections[using].cursor() as cursor:
        function = _render("@schema@._audit_stream_log_ddl()")
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
            _render(
                LOG_ROWS_FUNCTION.replace(
                    "{after_events}", triggers.after_events(ROW_LOG_TABLE, nothing_written="_rows = 0")
                ).replace("{context_id}", triggers.CONTEXT_ID_SQL)
            )
        )
        for sql in (COLUMNS_FUNCTION, STOP_LOGGING_FUNCTION, START_LOGGING_FUNCTION):
            cursor.execute(_render(sql))
        for sql in ddl_functions():
            cursor.execute(sql)
        cursor.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
        if not cursor.fetchone()[0]:
            return False
        cursor.execute(_render(CREATE_EVENT_TRIGGERS))
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
                reason = always.get(table) if schema == _current_schema(cursor) else None
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


def _current_schema(cursor) -> str:
    cursor.execute("SELECT current_schema()")
    return cursor.fetchone()[0]


def _regclass(schema: str, table: str) -> str:
    return f"{triggers.quote_name(schema)}.{triggers.quote_name(table)}"


# --- reading: which model a logged table is, and back ---------------------------------------------


def logged_table(model: type[django_models.Model], *, using: str = DEFAULT_DB_ALIAS) -> str:
    """The name the row log gives ``model``'s table: ``"schema.table"``."""
    with connections[using].cursor() as cursor:
        schema = _current_schema(cursor)
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
        schema = _current_schema(cursor)
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


# --- versions: a row as an entry recorded it, rebuilt backwards from the live row ---------------------

# The row now, as the log writes rows.
_CURRENT_ROW_SQL = "SELECT to_jsonb(t)::text FROM {table} AS t WHERE t.{pk}::text = %s"

# The entries of one row after a given one, newest first.
_LATER_ENTRIES_SQL = """
SELECT pgh_label, old_data::text FROM audit_stream_row_log
WHERE logged_table = ANY (%s) AND pgh_obj_id = %s AND pgh_id > %s
ORDER BY pgh_id DESC
"""

# A JSON row back into the table's row type: PostgreSQL does the conversions,
# and Django reads the result as a model instance.
_POPULATE_SQL = "SELECT * FROM jsonb_populate_record(NULL::{table}, %s::jsonb)"


def model_of(entry, *, using: str = DEFAULT_DB_ALIAS) -> type[django_models.Model] | None:
    """The model of the table ``entry`` was logged from (following renames), if there is one."""
    from audit_stream.models import DdlLog

    name, seen = entry.logged_table, set()
    names = models_by_table(using=using)
    while name not in names and name not in seen:
        seen.add(name)
        renamed = (
            DdlLog.objects.using(using)
            .filter(pgh_label="rename", former_name=name)
            .order_by("pgh_id")
            .values_list("logged_table", flat=True)
            .first()
        )
        if renamed is None:
            return None
        name = renamed
    return apps.get_model(names[name]) if name in names else None


def recorded_state(entry, *, using: str = DEFAULT_DB_ALIAS, model=None) -> dict | None:
    """The whole row as it was just after ``entry`` (before it, for a delete), as JSON values.

    pgMemento's method: start from the row as it is now and undo, newest
    first, every later entry of it (an update puts back its old values, a
    delete puts back the whole row, an insert means the row did not exist).
    """
    import json

    from audit_stream.exact import ExactDecoder

    if entry.pgh_label == "delete":
        return entry.old_data
    model = model or model_of(entry, using=using)
    if model is None:
        return None
    meta = model._meta.concrete_model._meta
    state = None
    with connections[using].cursor() as cursor:
        cursor.execute(
            _CURRENT_ROW_SQL.format(
                table=triggers.quote_name(meta.db_table), pk=triggers.quote_name(meta.pk.column)
            ),
            [entry.pgh_obj_id],
        )
        row = cursor.fetchone()
        if row is not None:
            state = json.loads(row[0], cls=ExactDecoder)
        cursor.execute(_LATER_ENTRIES_SQL, [table_names(model, using=using), entry.pgh_obj_id, entry.pgh_id])
        for label, old in cursor.fetchall():
            old = json.loads(old, cls=ExactDecoder) if old is not None else None
            if label == "delete":
                state = old
            elif label == "update":
                state = {**(state or {}), **old}
            else:  # before its insert, the row did not exist
                state = None
    return state


def recorded_instance(entry, *, using: str | None = None) -> django_models.Model | None:
    """:func:`recorded_state` as an (unsaved) instance of the table's model."""
    from audit_stream import exact

    using = using or DEFAULT_DB_ALIAS
    model = model_of(entry, using=using)
    state = recorded_state(entry, using=using, model=model) if model is not None else None
    if state is None:
        return None
    sql = _POPULATE_SQL.format(table=triggers.quote_name(model._meta.concrete_model._meta.db_table))
    rows = list(model._default_manager.db_manager(using).raw(sql, [exact.dumps(state)]))
    return rows[0] if rows else None
