"""The SQL ``initlogging`` installs: the row-log trigger function, the DDL log's event triggers, removal.

Written out once; :func:`render` fills in audit_stream's schema and the pinned
search path (every function runs as its owner, ``SECURITY DEFINER``).
"""

from __future__ import annotations

from audit_stream import config, triggers

__all__ = [
    "COLUMNS_FUNCTION",
    "CREATE_EVENT_TRIGGERS",
    "DDL_ID_SQL",
    "EVENT_TRIGGERS",
    "LOG_DDL_FUNCTION",
    "LOG_DROP_FUNCTION",
    "LOG_ROWS_FUNCTION",
    "START_LOGGING_FUNCTION",
    "STOP_LOGGING_FUNCTION",
    "TRIGGERS",
    "UNINSTALL_SQL",
    "render",
]

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


def render(sql: str) -> str:
    """``sql`` with audit_stream's schema and the pinned search path filled in."""
    return sql.replace("@schema@", triggers.quote_name(config.schema())).replace(
        "@search_path@", triggers.search_path()
    )
