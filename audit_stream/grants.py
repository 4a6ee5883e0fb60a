"""The privileges of the application's runtime role, written out as GRANT and REVOKE statements.

A two-role deployment: an *owner* role runs the migrations and owns every
table and every function audit_stream installs (the functions run as it:
``SECURITY DEFINER``); the application connects as a *runtime* role, which
gets exactly this:

* the application's tables: ``SELECT, INSERT, UPDATE, DELETE``, and its
  sequences ``USAGE, SELECT`` (``django_migrations``: ``SELECT``);
* history (every event table, ``Context``, the row log, the DDL log and the
  registry of logged tables): ``SELECT`` only, to read history (admin,
  ``AggregateEvent``, webhook payloads); every other privilege revoked, so
  it cannot insert, update, delete or truncate it. So are the per-context
  and per-partition counts (``ContextCount``, ``PartitionCount``): a count
  lowered would let retention delete a context events still refer to (the
  fold's triggers write them as the owner);
* the stream's tables (``Change``, checkpoints, webhooks, heartbeats, runs):
  ``SELECT, INSERT, UPDATE, DELETE``, for the worker, the listener, the
  dashboard and the webhook admin;
* the wake-up sequence: ``SELECT, UPDATE`` (the worker re-arms it);
* ``EXECUTE`` on the manual-event functions (``create_event``) and on the
  partition function (beat's ``ensure_partitions``: creating a partition
  needs the owner, and the function acts as it, within the layout the owner
  recorded);
* ``USAGE`` on the schema, and no ``CREATE`` in it.

``pruner`` names a role that may delete history (retention of event tables,
the row log and contexts, ``prune_history --erase``): ``SELECT, DELETE`` on
history, and ``INSERT, UPDATE`` too on the per-context and per-partition
counts (each delete of events takes them off their counts). The owner always may.
"""

from __future__ import annotations

from django.db import DEFAULT_DB_ALIAS, connections

from audit_stream import config, registry, rowlog, triggers

__all__ = ["history_tables", "statements"]

# audit_stream's own tables that are history (the rest of audit_stream_* is the stream's),
# with the counts that guard contexts, per context and per partition (written by
# retention's deletes: the pruner's).
_COUNTS = ("audit_stream_context_count", "audit_stream_partition_count")
_HISTORY = (
    "audit_stream_context",
    rowlog.ROW_LOG_TABLE,
    "audit_stream_ddl_log",
    "audit_stream_logged_table",
    *_COUNTS,
)

# Tables and sequences of the schema, with the table a sequence belongs to (if any),
# named by the root of its partition tree: a partition of an event table is history
# (audit_stream.partitions), and the parent's append-only trigger does not fire for
# statements that name a partition directly.
_RELATIONS_SQL = """
SELECT c.relname, c.relkind,
       coalesce((SELECT r.relname FROM pg_class AS r WHERE r.oid = pg_partition_root(owner.oid)),
                owner.relname),
       coalesce((SELECT r.relname FROM pg_class AS r WHERE r.oid = pg_partition_root(c.oid)), c.relname)
FROM pg_class AS c
JOIN pg_namespace AS n ON n.oid = c.relnamespace
LEFT JOIN pg_depend AS d
       ON d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype IN ('a', 'i')
      AND d.refclassid = 'pg_class'::regclass
LEFT JOIN pg_class AS owner ON owner.oid = d.refobjid
WHERE n.nspname = %s AND c.relkind IN ('r', 'p', 'S')
ORDER BY c.relkind, c.relname
"""

# The manual-event functions installed after migrate (triggers.create_event_function).
_EVENT_FUNCTIONS_SQL = """
SELECT p.oid::regprocedure::text
FROM pg_proc AS p JOIN pg_namespace AS n ON n.oid = p.pronamespace
WHERE n.nspname = %s AND p.proname LIKE '\\_audit\\_stream\\_event\\_%%'
ORDER BY 1
"""


def history_tables() -> list[str]:
    """The tables that hold history: every event table, and audit_stream's history tables."""
    return sorted({*registry.event_models, *_HISTORY})


def statements(role: str, *, pruner: str | None = None, using: str = DEFAULT_DB_ALIAS) -> list[str]:
    """The ``GRANT``/``REVOKE`` statements that give ``role`` what a runtime role needs, and no more.

    Read from the database as it is now (run again after each ``migrate``):
    every table of ``AUDIT_STREAM["SCHEMA"]`` is classified as history,
    the stream's, or the application's.
    """
    quote = triggers.quote_name
    schema = config.schema()
    history = set(history_tables())
    grantee = quote(role)
    with connections[using].cursor() as cursor:
        cursor.execute(_RELATIONS_SQL, [schema])
        relations = cursor.fetchall()
        cursor.execute(_EVENT_FUNCTIONS_SQL, [schema])
        functions = [row[0] for row in cursor.fetchall()]
    sql = [
        f"GRANT USAGE ON SCHEMA {quote(schema)} TO {grantee};",
        f"REVOKE CREATE ON SCHEMA {quote(schema)} FROM {grantee};",
    ]
    for name, kind, owner, root in relations:
        qualified = triggers.qualified(name)
        if kind == "S":
            sql.append(f"REVOKE ALL ON SEQUENCE {qualified} FROM {grantee};")
            if name == triggers.WAKEUP_SEQUENCE:
                sql.append(f"GRANT SELECT, UPDATE ON SEQUENCE {qualified} TO {grantee};")
            elif owner not in history:
                sql.append(f"GRANT USAGE, SELECT ON SEQUENCE {qualified} TO {grantee};")
            continue
        sql.append(f"REVOKE ALL ON TABLE {qualified} FROM {grantee};")
        if root in history or name == "django_migrations":
            sql.append(f"GRANT SELECT ON TABLE {qualified} TO {grantee};")
        else:
            sql.append(f"GRANT SELECT, INSERT, UPDATE, DELETE ON TABLE {qualified} TO {grantee};")
    sql.extend(f"GRANT EXECUTE ON FUNCTION {function} TO {grantee};" for function in functions)
    # Keeping partitions ahead (beat's ensure_partitions): creating one needs the owner.
    ensure_partitions = triggers.qualified("_audit_stream_ensure_partitions")
    sql.append(f"GRANT EXECUTE ON FUNCTION {ensure_partitions}(text) TO {grantee};")
    if pruner:
        sql.extend(
            f"GRANT SELECT, {'INSERT, UPDATE, ' if root in _COUNTS else ''}DELETE"
            f" ON TABLE {triggers.qualified(name)} TO {quote(pruner)};"
            for name, kind, _, root in relations
            if kind != "S" and root in history
        )
    return sql


def role_problem(role: str, *, using: str = DEFAULT_DB_ALIAS) -> str | None:
    """Why ``role`` cannot be the runtime role (missing, superuser, or owner of history), or ``None``."""
    with connections[using].cursor() as cursor:
        cursor.execute(
            "SELECT r.rolsuper, pg_has_role(r.oid, c.relowner, 'MEMBER')"
            " FROM pg_roles AS r LEFT JOIN pg_class AS c ON c.oid = to_regclass(%s)"
            " WHERE r.rolname = %s",
            [triggers.qualified("audit_stream_context"), role],
        )
        row = cursor.fetchone()
    if row is None:
        return f"There is no role {role!r}: create it first (CREATE ROLE {role} LOGIN PASSWORD '...')."
    if row[0]:
        return f"{role!r} is a superuser: a superuser bypasses every privilege. Name a plain LOGIN role."
    if row[1]:
        return (
            f"{role!r} owns audit_stream's tables (or is a member of their owner): the owner can"
            " change or drop history. Name the role the application connects with, not the one"
            " that runs migrations."
        )
    return None
