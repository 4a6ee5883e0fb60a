"""Database plumbing: create the benchmark database, reset tables between runs, count rows."""

from __future__ import annotations

import io
from pathlib import Path

import psycopg
from django.conf import settings
from django.core.management import call_command
from django.db import connection, transaction
from psycopg import sql

#: Rows in the Category table; items point to them round-robin.
CATEGORIES = 10
MIGRATIONS = Path(__file__).resolve().parent / "benchapp" / "migrations"


def recreate_database() -> None:
    """Drop and create the benchmark database (from the ``postgres`` maintenance database)."""
    connection.close()  # DROP ... WITH (FORCE) would kill it under Django's feet
    db = settings.DATABASES["default"]
    params = {
        "host": db.get("HOST") or None,
        "port": db.get("PORT") or None,
        "user": db.get("USER") or None,
        "password": db.get("PASSWORD") or None,
        "dbname": "postgres",
        "autocommit": True,
    }
    name = sql.Identifier(db["NAME"])
    with psycopg.connect(**{k: v for k, v in params.items() if v is not None}) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(name))


def regenerate_migrations() -> None:
    """Replace benchapp's migrations with one generated from the current models and triggers."""
    for path in MIGRATIONS.glob("0*.py"):
        path.unlink()
    call_command("makemigrations", "benchapp", verbosity=0)


def migrate() -> None:
    """Apply every migration, after checking the committed benchapp migrations are current.

    The triggers are installed from the SQL recorded in the migrations; if
    audit_stream's trigger templates changed since they were generated, the
    benchmark would measure old triggers. Fail instead.
    """
    out = io.StringIO()
    try:
        call_command("makemigrations", "benchapp", check=True, dry_run=True, stdout=out)
    except SystemExit as exc:
        raise RuntimeError(
            "benchmarks/benchapp/migrations are out of date (the trigger SQL changed):\n"
            + out.getvalue()
            + "Regenerate them: python -m benchmarks.write --update-migrations"
        ) from exc
    call_command("migrate", verbosity=0, interactive=False)


def create_categories(model) -> list[int]:
    """Create the categories once; return their primary keys."""
    model.objects.bulk_create(model(name=f"category {i}") for i in range(CATEGORIES))
    return list(model.objects.order_by("pk").values_list("pk", flat=True))


def execute(statement: str, params=None) -> list[tuple]:
    """Run one statement on the default connection; return its rows (if any)."""
    with connection.cursor() as cursor:
        cursor.execute(statement, params)
        return cursor.fetchall() if cursor.description else []


def scalar(statement: str, params=None):
    """The single value a query returns."""
    return execute(statement, params)[0][0]


def reset(tables: list[str]) -> None:
    """Empty the tables, reclaim their space and flush dirty pages, so every run starts alike.

    ``TRUNCATE`` is not refused by audit_stream's append-only trigger (which
    guards ``UPDATE`` and ``DELETE``). The checkpoint keeps a checkpoint from
    landing in the middle of the next timed run more than chance would.
    """
    names = ", ".join(connection.ops.quote_name(t) for t in tables)
    execute(f"TRUNCATE {names} RESTART IDENTITY")
    vacuum(tables)
    execute("CHECKPOINT")


def vacuum(tables: list[str]) -> None:
    """``VACUUM ANALYZE`` the tables (outside a transaction: Django autocommit)."""
    names = ", ".join(connection.ops.quote_name(t) for t in tables)
    execute(f"VACUUM ANALYZE {names}")


def prefill(table: str, rows: int, category_ids: list[int]) -> None:
    """Insert ``rows`` items directly, with triggers disabled (no events), for update/delete runs.

    ``session_replication_role = replica`` skips user triggers and the
    foreign-key checks (the categories exist); it needs a superuser.
    """
    quoted = connection.ops.quote_name(table)
    with transaction.atomic():
        execute("SET LOCAL session_replication_role = replica")
        execute(
            f"INSERT INTO {quoted} (name, price, stock, note, category_id)"
            " SELECT 'item ' || i, 9.99, i, 'prefilled', (%s::bigint[])[1 + i %% %s]"
            " FROM generate_series(1, %s) AS i",
            [category_ids, len(category_ids), rows],
        )


def count(table: str, where: str = "") -> int:
    """Rows in a table, optionally filtered by a fixed SQL condition."""
    quoted = connection.ops.quote_name(table)
    return scalar(f"SELECT count(*) FROM {quoted}" + (f" WHERE {where}" if where else ""))


def server_info() -> dict[str, str]:
    """The PostgreSQL version and the settings that matter most for write benchmarks."""
    info = {"version": scalar("SELECT version()")}
    for name in ("shared_buffers", "synchronous_commit", "fsync", "wal_level", "max_wal_size"):
        info[name] = scalar(f"SHOW {name}")
    return info


# The trigger functions of one table and a copy of the context attach, as
# SECURITY INVOKER without a pinned search_path (their bodies stay qualified).
_STRIP_SECURITY_DEFINER = """
DO $$
DECLARE
    _fn regprocedure;
    _def text;
BEGIN
    _def := pg_get_functiondef('_audit_stream_attach_context(uuid, text)'::regprocedure);
    _def := replace(_def, '_audit_stream_attach_context(', '_audit_stream_attach_context_invoker(');
    _def := regexp_replace(_def, '\n SECURITY DEFINER', '');
    _def := regexp_replace(_def, '\n SET search_path TO [^\n]*', '');
    EXECUTE _def;
    FOR _fn IN SELECT DISTINCT t.tgfoid::regprocedure FROM pg_trigger AS t
               WHERE t.tgrelid = %(table)s::regclass AND NOT t.tgisinternal LOOP
        _def := pg_get_functiondef(_fn);
        _def := replace(_def, '_audit_stream_attach_context(', '_audit_stream_attach_context_invoker(');
        _def := regexp_replace(_def, '\n SECURITY DEFINER', '');
        _def := regexp_replace(_def, '\n SET search_path TO [^\n]*', '');
        EXECUTE _def;
    END LOOP;
END;
$$;
"""


def strip_security_definer(table: str) -> None:
    """Make ``table``'s trigger functions SECURITY INVOKER without a pinned search_path."""
    with connection.cursor() as cursor:
        cursor.execute(_STRIP_SECURITY_DEFINER.replace("%(table)s", "'" + table.replace("'", "''") + "'"))
        cursor.execute(
            "SELECT count(*) FROM pg_trigger AS t JOIN pg_proc AS p ON p.oid = t.tgfoid"
            " WHERE t.tgrelid = %s::regclass AND NOT t.tgisinternal"
            " AND (p.prosecdef OR p.proconfig IS NOT NULL)",
            [table],
        )
        if cursor.fetchone()[0]:
            raise RuntimeError(f"{table}: trigger functions still SECURITY DEFINER")


def backend_pid() -> int:
    """The process id of the benchmark connection's PostgreSQL backend."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return cursor.fetchone()[0]
