"""The SQL that runs inside the user's transaction: every trigger audit_stream installs.

Design (see BENCHMARKS.md for what each choice bought):

* Every event trigger is an ``AFTER ... FOR EACH STATEMENT`` trigger with a
  transition table (``REFERENCING OLD/NEW TABLE``). One ``INSERT ... SELECT``
  writes all the event rows of a statement, so ``bulk_create``,
  ``QuerySet.update()`` and ``QuerySet.delete()`` cost one extra statement,
  not one function call per row.
* No ``BEGIN ... EXCEPTION`` block anywhere. django-pgtrigger's stock template
  calls ``_pgtrigger_should_ignore()``, which reads a setting inside such a
  block; each aborted subtransaction scans the queue of deferred foreign-key
  checks, which makes bulk writes quadratic. Our template reads settings with
  ``current_setting(name, true)``, which cannot raise, and still honours
  ``pgtrigger.ignore()``.
* Each event row carries ``pgh_xid``, the writing transaction's id, read once
  per statement. The fold uses it to take exactly the events that committed
  between two snapshots (``audit_stream.stream.fold``).
* Writers wake the stream with ``pg_notify`` only when the worker is idle
  (the ``audit_stream_wakeup`` sequence is armed): NOTIFY takes a cluster-wide
  lock at commit, and notifying on every transaction costs 3x throughput with
  8 writers (DESIGN.md).
* The context (who/why) is read once per statement from two transaction-local
  settings that :mod:`audit_stream.context` sends with the statement itself.
  The ``Context`` row is attached once per statement, and only written when
  it is missing or its metadata changed.

* Every function audit_stream installs runs as its owner (``SECURITY DEFINER``)
  with a pinned ``search_path`` (:func:`search_path`: ``pg_catalog``, the
  schema of audit_stream's tables, ``pg_temp`` last) and schema-qualified
  names (:func:`qualified`): the application's runtime role needs no
  privilege on event tables to be recorded, and cannot divert events into a
  temporary table of the same name. ``pgtrigger.ignore()`` is honoured only
  for members of the functions' owner role (:data:`IGNORE_CHECK`).

The templates are versioned by their text: django-pgtrigger stores a hash of
the installed SQL, so changing a template here shows up as a new migration.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import pgtrigger
from pgtrigger import compiler

from audit_stream import config, keys

if TYPE_CHECKING:
    from django.db import models

# Settings (GUCs) that carry the context to the triggers. They are always set
# with set_config(..., is_local => true), so they end with the transaction.
CONTEXT_ID_SETTING = "audit_stream.context_id"
CONTEXT_METADATA_SETTING = "audit_stream.context_metadata"
# Once a context's row is known to exist (see audit_stream.context), autocommit
# statements carry only its id, in a leading comment: "/* audit_stream <uuid> */ ".
CONTEXT_COMMENT = "/* audit_stream {} */ "
# The context of the statement being run: the transaction-local setting (sent
# with the metadata), else the id in the statement's leading comment. Evaluated
# once per statement, as an initplan of the event INSERT.
CONTEXT_ID_SQL = (
    f"coalesce(nullif(current_setting('{CONTEXT_ID_SETTING}', true), '')::uuid, ("
    "SELECT CASE WHEN left(c.q, 16) = '/* audit_stream ' AND substr(c.q, 53, 4) = ' */ '"
    # a canonical UUID: 32 hex digits, dashes at 9, 14, 19, 24 (string functions, no regex:
    # PostgreSQL's regex engine costs more than the rest of the trigger)
    " AND translate(substr(c.q, 17, 36), '0123456789abcdef', '') = '----'"
    " AND substr(c.q, 25, 1) || substr(c.q, 30, 1) || substr(c.q, 35, 1) || substr(c.q, 40, 1) = '----'"
    " THEN substr(c.q, 17, 36)::uuid END"
    " FROM (SELECT current_query() AS q) AS c))"
)
# Session settings (a cache, never a source of truth): the context this session
# last attached, "<uuid> <valid until, epoch seconds>", and its metadata.
ATTACHED_SETTING = "audit_stream.attached"
ATTACHED_METADATA_SETTING = "audit_stream.attached_metadata"
# Non-transactional wake-up flag: armed when its next value is 1.
WAKEUP_SEQUENCE = "audit_stream_wakeup"
# Set (transaction-locally) by retention only, to delete from event tables.
ALLOW_PRUNE_SETTING = "audit_stream.allow_prune"

# Names of the transition tables inside event trigger functions.
_OLD = "_old"
_NEW = "_new"


class TriggerSql(compiler.UpsertTriggerSql):
    """django-pgtrigger's installation SQL without the ``EXCEPTION`` block.

    Identical to pgtrigger's v1 template except that the trigger function is
    not wrapped in a call to ``_pgtrigger_should_ignore()``: each function
    body checks ``pgtrigger.ignore`` itself, without a subtransaction (see
    :data:`IGNORE_CHECK`). Do not edit this template casually: migrations
    reference it, and its hash tells whether installed triggers are current.
    """

    def get_template(self) -> str:
        # The search path is part of the template (and so of its hash): changing
        # AUDIT_STREAM["SCHEMA"] shows up as new migrations, like CHANNEL.
        return _TEMPLATE.replace("{search_path}", search_path().replace("{", "{{").replace("}", "}}"))


_TEMPLATE = """
            CREATE OR REPLACE FUNCTION {pgid}()
            RETURNS TRIGGER LANGUAGE plpgsql
            SECURITY DEFINER SET search_path = {search_path}
            AS $$
                {declare}
                BEGIN
                    {func}
                END;
            $$;

            DROP TRIGGER IF EXISTS {pgid} ON {table};
            CREATE {constraint} TRIGGER {pgid}
                {when} {operation} ON {table}
                {timing}
                {referencing}
                FOR EACH {level} {condition}
                EXECUTE PROCEDURE {execute};

            COMMENT ON TRIGGER {pgid} ON {table} IS '{hash}';
        """


# pgtrigger.ignore("app.Model:name") sets pgtrigger.ignore to an array literal
# of trigger ids. Reading it with missing_ok => true returns NULL or '' when
# it is unset, so the common path is two cheap comparisons and no array parse.
#
# Skipping capture is a privilege: inside a SECURITY DEFINER function
# current_user is the function's owner (the role that ran the migrations), so
# only that role, its members and superusers may skip audit_stream's triggers.
# For anyone else (the application's runtime role) the setting is ignored and
# the statement is recorded. The role check runs only when the setting names
# this trigger.
IGNORE_CHECK = """
    _ignore := current_setting('pgtrigger.ignore', true);
    IF _ignore IS NOT NULL AND _ignore <> '' AND TG_NAME = ANY(_ignore::text[])
       AND pg_has_role(session_user, current_user, 'MEMBER') THEN
        RETURN NULL;
    END IF;
"""


class _Trigger(pgtrigger.Trigger):
    """A pgtrigger trigger compiled with :class:`TriggerSql`."""

    def compile(self, model: type[models.Model]) -> compiler.Trigger:
        compiled = super().compile(model)
        kwargs = dict(compiled.sql.kwargs)
        kwargs.pop("ignore_func_name", None)
        return compiler.Trigger(name=self.name, sql=TriggerSql(**kwargs))


def search_path() -> str:
    """The ``search_path`` every function audit_stream installs runs with.

    ``pg_catalog`` first, then the schema of audit_stream's tables
    (``AUDIT_STREAM["SCHEMA"]``, for the operators and types of extensions
    installed there), and ``pg_temp`` explicitly last: left out, PostgreSQL
    would search it *first* for tables, and a temporary table named like an
    event table would receive the events.
    """
    return f"pg_catalog, {quote_name(config.schema())}, pg_temp"


def change_trigger_sql(name: str, function: str, *, on: str = "INSERT", rows: str = "NEW") -> str:
    """A statement-level trigger on the change feed: ``name`` (re)created ``AFTER on``, running
    ``function`` with its ``rows`` table as ``_audit_stream_rows``.

    Each of the counts the fold keeps (:mod:`audit_stream.retention.counts`,
    :mod:`~audit_stream.retention.references`, :mod:`audit_stream.partitions.counts`) is such a trigger.
    """
    change = qualified("audit_stream_change")
    return f"""DROP TRIGGER IF EXISTS {name} ON {change};
CREATE TRIGGER {name} AFTER {on} ON {change}
    REFERENCING {rows} TABLE AS _audit_stream_rows FOR EACH STATEMENT EXECUTE FUNCTION {function}();
"""


def drop_change_trigger_sql(function: str, *names: str) -> str:
    """Drop the triggers ``names`` on the change feed and their ``function`` (:func:`change_trigger_sql`)."""
    change = qualified("audit_stream_change")
    dropped = "".join(f"DROP TRIGGER IF EXISTS {name} ON {change};\n" for name in names)
    return f"{dropped}DROP FUNCTION IF EXISTS {function}();\n"


def qualified(name: str) -> str:
    """``name`` (a table, sequence or function of audit_stream) qualified with its schema."""
    return f"{quote_name(config.schema())}.{quote_name(name)}"


def _literal(value: str) -> str:
    """Quote a string as an SQL literal (only for labels fixed at declaration time)."""
    return "'" + value.replace("'", "''") + "'"


def quote_name(name: str) -> str:
    """Quote an SQL identifier (table or column names from model metadata, never user input)."""
    return '"' + name.replace('"', '""') + '"'


_ROW_REFERENCE = re.compile(r'(?<![\w."])(OLD|NEW)\s*\.', re.IGNORECASE)


def statement_condition(condition_sql: str) -> str:
    """Rewrite a row-level pgtrigger condition for the transition tables.

    ``OLD."price" IS DISTINCT FROM NEW."price"`` becomes
    ``_old."price" IS DISTINCT FROM _new."price"``.
    """
    return _ROW_REFERENCE.sub(lambda m: (_OLD if m.group(1).upper() == "OLD" else _NEW) + ".", condition_sql)


def references(condition_sql: str) -> set[str]:
    """Which rows ("OLD", "NEW") a row-level condition refers to."""
    return {m.group(1).upper() for m in _ROW_REFERENCE.finditer(condition_sql)}


def transition_tables(operation: pgtrigger.Operation) -> pgtrigger.Referencing:
    """The transition tables a statement trigger on ``operation`` reads: ``_old``, ``_new`` or both."""
    return {
        "INSERT": pgtrigger.Referencing(new=_NEW),
        "UPDATE": pgtrigger.Referencing(old=_OLD, new=_NEW),
        "DELETE": pgtrigger.Referencing(old=_OLD),
    }[str(operation)]


class EventTrigger(_Trigger):
    """Writes one event row per affected row, in one statement per statement.

    For an ``UPDATE`` the snapshot side (``OLD`` or ``NEW``) is read from its
    transition table; the other side is joined on the primary key only when
    the condition needs it.
    """

    level = pgtrigger.Statement
    when = pgtrigger.After

    def __init__(
        self,
        *,
        name: str,
        event_model: type[models.Model],
        label: str,
        operation: pgtrigger.Operation,
        snapshot: str,
        condition_sql: str = "",
    ) -> None:
        self.event_model = event_model
        self.label = label
        self.snapshot = snapshot
        self.condition_sql = condition_sql
        referencing = transition_tables(operation)
        super().__init__(
            name=name,
            operation=operation,
            referencing=referencing,
            declare=[
                ("_ignore", "text"),
                ("_context_id", "uuid"),
            ],
        )

    def get_func(self, model: type[models.Model]) -> str:
        event_model = self.event_model
        tracked = event_model.pgh_tracked_model
        pk_column = tracked._meta.pk.column
        side = _OLD if self.snapshot == "OLD" else _NEW
        other = _NEW if side == _OLD else _OLD
        tracked_columns = {f.attname: f.column for f in tracked._meta.concrete_fields}

        # pgh_xid: the writing transaction, read by the fold (audit_stream.stream.fold).
        #
        # The INSERT below uses no PL/pgSQL variable: a statement with one is
        # parameterised, and PostgreSQL then weighs re-planning it on every
        # call; after large statements it does, which measured +35 µs per
        # single-row statement (BENCHMARKS.md, "Plan cache"). Without
        # variables, the cached plan is always reused. The context id is an
        # initplan, evaluated once per statement.
        columns = ["pgh_label", "pgh_xid"]
        values = [_literal(self.label), "pg_current_xact_id()::text::bigint"]
        composite = keys.is_composite(tracked)
        if getattr(event_model, "_pgh_has_obj", False):
            columns.append("pgh_obj_id")
            values.append(keys.sql(tracked, side) if composite else f"{side}.{quote_name(pk_column)}")
        if getattr(event_model, "_pgh_has_context", False):
            columns.append("pgh_context_id")
            values.append(f"(SELECT {CONTEXT_ID_SQL})")
        for field in event_model._meta.concrete_fields:
            if field.attname in getattr(event_model, "_pgh_tracked_fields", ()):
                columns.append(field.column)
                values.append(f"{side}.{quote_name(tracked_columns[field.attname])}")

        condition = statement_condition(self.condition_sql) if self.condition_sql else ""
        source = f"{quote_name(side)} AS {side}"
        other_row = "NEW" if self.snapshot == "OLD" else "OLD"
        if other_row in references(self.condition_sql):
            same_row = (
                keys.join(tracked, other, side)
                if composite
                else f"{other}.{quote_name(pk_column)} = {side}.{quote_name(pk_column)}"
            )
            source += f" JOIN {quote_name(other)} AS {other} ON {same_row}"

        # The trigger body. Everything in it is fixed at declaration time
        # except the context, read from transaction-local settings.
        table = event_model._meta.db_table
        body = f"""
            {IGNORE_CHECK}
            INSERT INTO {qualified(table)} ({", ".join(map(quote_name, columns))})
            SELECT {", ".join(values)}
            FROM {source}
            {"WHERE " + condition if condition else ""};
            {after_events(table)}
        """
        return _compact(body)


def after_events(event_table: str, nothing_written: str = "NOT FOUND") -> str:
    """The end of every trigger that writes events: context, then wake-up.

    Runs right after the trigger's ``INSERT ... SELECT`` into ``event_table``;
    the function must declare ``_context_id uuid``. ``nothing_written`` is the
    condition that says the statement wrote no event (``FOUND`` is not set by
    ``EXECUTE``: a function that uses it passes its own row count).
    """
    return f"""
            IF {nothing_written} THEN
                RETURN NULL;
            END IF;

            -- Attach the context once per statement, and only if rows were written;
            -- skipped while this session's marker says the row exists with this
            -- metadata (see _audit_stream_attach_context).
            _context_id := nullif(current_setting('{CONTEXT_ID_SETTING}', true), '')::uuid;
            IF _context_id IS NOT NULL AND (
                coalesce(left(current_setting('{ATTACHED_SETTING}', true), 36), '') <> _context_id::text
                OR coalesce(nullif(substr(current_setting('{ATTACHED_SETTING}', true), 38), ''), '0')::bigint
                   < extract(epoch FROM now())
                OR current_setting('{ATTACHED_METADATA_SETTING}', true)
                   IS DISTINCT FROM current_setting('{CONTEXT_METADATA_SETTING}', true)
            ) THEN
                -- A new context (one request, one context) is inserted here, without
                -- a function call; an existing one goes through the attach function.
                INSERT INTO {qualified("audit_stream_context")} (id, metadata, created_at, updated_at)
                VALUES (
                    _context_id,
                    coalesce(nullif(current_setting('{CONTEXT_METADATA_SETTING}', true), ''), '{{}}')::jsonb,
                    now(), now()
                )
                ON CONFLICT (id) DO NOTHING;
                IF FOUND THEN  -- the marker, as the attach function leaves it
                    PERFORM set_config(
                        '{ATTACHED_SETTING}',
                        _context_id::text || ' ' || (extract(epoch FROM now())::bigint + 600)::text, false
                    ), set_config(
                        '{ATTACHED_METADATA_SETTING}',
                        coalesce(current_setting('{CONTEXT_METADATA_SETTING}', true), ''), false
                    );
                ELSE
                    PERFORM {qualified("_audit_stream_attach_context")}(
                        _context_id, current_setting('{CONTEXT_METADATA_SETTING}', true)
                    );
                END IF;
            END IF;

            {wake_up(event_table)}
            RETURN NULL;
    """


def wake_up(event_table: str) -> str:
    """The statements that wake the stream worker for ``event_table``, only if it is idle.

    Run by every trigger that writes events, and by the DDL log's functions.
    """
    return f"""
            -- Wake the stream worker, only if it is idle. The worker arms the
            -- wake-up sequence (setval to 1) when it has caught up; the first
            -- writer after that draws 1 and notifies, the others draw more and
            -- skip NOTIFY, whose commit-time lock would serialise commits.
            -- nextval is not transactional and never waits: no writer blocks
            -- another, however long its transaction.
            IF nextval({_literal(qualified(WAKEUP_SEQUENCE))}) = 1 THEN
                PERFORM pg_notify({_literal(config.channel())}, {_literal(event_table)});
            END IF;
    """


class AppendOnly(_Trigger):
    """Refuses UPDATE and DELETE on an event table.

    Once per statement, before it touches a row. Retention deletes with
    ``audit_stream.allow_prune`` set for its own transaction only
    (:func:`audit_stream.retention.allow_prune`); UPDATE is never allowed.

    The setting is a safety catch, not the permission: deleting history needs
    the ``DELETE`` privilege on the table, which the owner has and the runtime
    role is never granted (``manage.py audit_stream_grants``), so a runtime
    role that sets ``audit_stream.allow_prune`` is refused by PostgreSQL itself.
    """

    level = pgtrigger.Statement
    when = pgtrigger.Before
    operation = pgtrigger.Update | pgtrigger.Delete

    def __init__(self) -> None:
        super().__init__(name="append_only")

    def get_func(self, model: type[models.Model]) -> str:
        return _compact(
            f"""
            IF TG_OP = 'DELETE'
               AND current_setting('{ALLOW_PRUNE_SETTING}', true) = 'on' THEN
                RETURN NULL;
            END IF;
            RAISE EXCEPTION 'audit_stream: % on "%" refused: history is append-only',
                TG_OP, TG_TABLE_NAME
                USING ERRCODE = 'insufficient_privilege',
                      HINT = 'Old history is removed by retention (manage.py prune_history).';
            """
        )


def _compact(sql: str) -> str:
    """Strip indentation so the installed function (and its hash) stays stable."""
    return "\n".join(line.strip() for line in sql.strip().splitlines() if line.strip())


# Installed by audit_stream's migrations. Called by the event triggers, at most
# once per statement, when this session has not attached the same context with
# the same metadata in the last 10 minutes.
#
# The common case of a web request is a new context with one write: one
# insert (django-pghistory upserts), which also serialises two transactions
# that create the same context concurrently. An existing context with the
# same metadata is neither rewritten nor locked, and thanks to the marker
# below not even probed again by the same session.
#
# Then it leaves a marker in a *session* setting, so that the session's next
# statements in the same context skip this call (in autocommit each statement
# is a transaction: without the marker, each would probe again). It is safe
# because:
# * set_config is transactional: if this transaction aborts (and the row it
#   wrote with it), the marker goes too;
# * the marker says only "this row exists", true for every session, and lasts
#   10 minutes; retention prunes a context only when nothing refers to it and
#   updated_at is over an hour old, and this function moves updated_at to now
#   whenever it is over 10 minutes old, so a marked context cannot be pruned
#   (and retention rechecks updated_at under the row lock).
#
# The client trusts a committed attach for 9 minutes and meanwhile sends only
# the context id (CONTEXT_COMMENT). Either way a statement's context was
# attached, and its updated_at refreshed, less than 20 minutes before: well
# inside retention's hour.
def attach_context_function() -> str:
    """The SQL that (re)creates ``_audit_stream_attach_context`` (see the comment above).

    A new context (the common web request) costs one ``INSERT ... ON CONFLICT
    DO NOTHING``; an existing one an ``UPDATE`` that writes (and locks) the row
    only when its metadata changed or its ``updated_at`` is over 10 minutes old,
    so sessions sharing a context do not wait for each other. ``EXECUTE`` is
    revoked from ``PUBLIC``: the triggers call it as its owner, and nobody else
    needs to.
    """
    table = qualified("audit_stream_context")
    function = qualified("_audit_stream_attach_context")
    return f"""
CREATE OR REPLACE FUNCTION {function}(_id uuid, _metadata text)
RETURNS void LANGUAGE plpgsql
SECURITY DEFINER SET search_path = {search_path()}
AS $$
DECLARE
    _value jsonb := coalesce(nullif(_metadata, ''), '{{}}')::jsonb;
BEGIN
    INSERT INTO {table} (id, metadata, created_at, updated_at)
    VALUES (_id, _value, now(), now())
    ON CONFLICT (id) DO NOTHING;
    IF NOT FOUND THEN
        -- An existing row: rewritten only if its metadata changed or it is stale;
        -- a row the WHERE does not match is not locked.
        UPDATE {table} SET metadata = _value, updated_at = now()
        WHERE id = _id
          AND (metadata IS DISTINCT FROM _value OR updated_at < now() - interval '10 minutes');
    END IF;
    PERFORM set_config('{ATTACHED_SETTING}',
                       _id::text || ' ' || (extract(epoch FROM now())::bigint + 600)::text, false),
            set_config('{ATTACHED_METADATA_SETTING}', coalesce(_metadata, ''), false);
END;
$$;
REVOKE EXECUTE ON FUNCTION {function}(uuid, text) FROM PUBLIC;
"""


DROP_ATTACH_CONTEXT_FUNCTION = "DROP FUNCTION IF EXISTS _audit_stream_attach_context(uuid, text);"

# The wake-up flag (see audit_stream.stream.wakeup). Starts disarmed; no cache,
# so that after setval() exactly one session draws 1.
CREATE_WAKEUP_SEQUENCE = f"CREATE SEQUENCE IF NOT EXISTS {WAKEUP_SEQUENCE} AS bigint START WITH 2 CACHE 1;"
DROP_WAKEUP_SEQUENCE = f"DROP SEQUENCE IF EXISTS {WAKEUP_SEQUENCE};"


# Not SECURITY DEFINER and no pinned search_path (unlike every function that
# writes): it reads no table and calls only pg_catalog functions, which are
# always resolved first, and it runs as its caller (the fold, AggregateEvent).
#
# The diff between two states of an object, shared by the fold (the Change feed)
# and AggregateEvent, so both say the same: {column: [old, new]} for the columns
# that differ; every column when there is no previous state; [old, null] for
# every column when the event is a delete.
DIFF_FUNCTION = """
CREATE OR REPLACE FUNCTION _audit_stream_diff(_before jsonb, _after jsonb, _is_delete boolean)
RETURNS jsonb LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN _is_delete THEN
        (SELECT coalesce(jsonb_object_agg(s.key, jsonb_build_array(s.value, NULL)), '{}')
         FROM jsonb_each(_after) AS s)
    ELSE
        (SELECT coalesce(jsonb_object_agg(s.key, jsonb_build_array(p.value, s.value)), '{}')
         FROM jsonb_each(_after) AS s
         LEFT JOIN jsonb_each(_before) AS p ON p.key = s.key
         WHERE p.value IS DISTINCT FROM s.value)
    END
$$;
"""

DROP_DIFF_FUNCTION = "DROP FUNCTION IF EXISTS _audit_stream_diff(jsonb, jsonb, boolean);"


def create_event_function_name(event_model: type[models.Model]) -> str:
    """The function :func:`audit_stream.create_event` calls for ``event_model`` (schema-qualified)."""
    return qualified(f"_audit_stream_event_{event_model._pgh_key}")


def create_event_function(event_model: type[models.Model], labels: list[str], pk_type: str) -> str:
    """The SQL that (re)creates ``event_model``'s manual-event function.

    ``create_event(obj, label=...)`` calls it, so the runtime role records
    manual events without any privilege on the event table: the function
    (owned by the role that ran the migrations) accepts only the model's
    declared ``labels``, attaches the context, and records the row *as it is
    in the database* (the live row, by primary key), never values sent by the
    caller. Returns the new event's ``pgh_id``. ``EXECUTE`` is revoked from
    ``PUBLIC``; ``manage.py audit_stream_grants`` grants it to the runtime role.
    """
    tracked = event_model.pgh_tracked_model._meta.concrete_model
    if keys.is_composite(tracked):
        # `_pk` is the object id (audit_stream.keys): a JSON object of every key column.
        object_id = keys.sql(tracked, "t")
        row = f"{object_id} = _pk"
    else:
        object_id = f"t.{quote_name(tracked._meta.pk.column)}"
        row = f"{object_id} = _pk::{pk_type}"
    tracked_columns = {f.attname: f.column for f in tracked._meta.concrete_fields}
    columns = ["pgh_label", "pgh_xid"]
    values = ["_label", "pg_current_xact_id()::text::bigint"]
    if getattr(event_model, "_pgh_has_obj", False):
        columns.append("pgh_obj_id")
        values.append(object_id)
    if getattr(event_model, "_pgh_has_context", False):
        columns.append("pgh_context_id")
        values.append("_context_id")
    for field in event_model._meta.concrete_fields:
        if field.attname in getattr(event_model, "_pgh_tracked_fields", ()):
            columns.append(field.column)
            values.append(f"t.{quote_name(tracked_columns[field.attname])}")
    function = create_event_function_name(event_model)
    label_array = "ARRAY[" + ", ".join(_literal(label) for label in labels) + "]::text[]"
    model_label = _literal(tracked._meta.label)
    return f"""
CREATE OR REPLACE FUNCTION {function}(_label text, _pk text, _context_id uuid, _metadata text)
RETURNS bigint LANGUAGE plpgsql
SECURITY DEFINER SET search_path = {search_path()}
AS $$
DECLARE
    _id bigint;
BEGIN
    IF _label IS NULL OR NOT _label = ANY ({label_array}) THEN
        RAISE EXCEPTION 'audit_stream: "%" is not an event label of %', _label, {model_label}
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF _context_id IS NOT NULL THEN
        PERFORM {qualified("_audit_stream_attach_context")}(_context_id, _metadata);
    END IF;
    INSERT INTO {qualified(event_model._meta.db_table)} ({", ".join(map(quote_name, columns))})
    SELECT {", ".join(values)}
    FROM {qualified(tracked._meta.db_table)} AS t
    WHERE {row}
    RETURNING pgh_id INTO _id;
    IF _id IS NULL THEN
        RAISE EXCEPTION 'audit_stream: there is no % with primary key %', {model_label}, _pk
            USING ERRCODE = 'no_data_found',
                  HINT = 'create_event() records the row as it is in the database: save the object first.';
    END IF;
    RETURN _id;
END;
$$;
REVOKE EXECUTE ON FUNCTION {function}(text, text, uuid, text) FROM PUBLIC;
"""
