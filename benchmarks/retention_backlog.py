"""The retention benchmark's backlog: the aged events every prune starts from (benchmarks/retention.py).

Inserted, folded and aged once (or taken from the set-up kept by ``--reuse``),
copied aside, and restored into the event table before every prune.
"""

from __future__ import annotations

import argparse
import json
import time

from benchmarks.perfapp.harness import (
    EVENTS,
    count,
    execute,
    insert_items,
    insert_items_sql,
    log,
    scalar,
    vacuum,
)

CHANGE = "audit_stream_change"
BACKLOG = "bench_retention_backlog"


# --------------------------------------------------------------------------- set-up


def build_backlog(args: argparse.Namespace) -> dict:
    """Insert, fold and age ``args.rows`` events; copy them aside. Returns the set-up timings."""
    from audit_stream.stream.fold import fold_all

    rows = args.rows
    log(f"inserting {rows:,} tracked rows ({args.insert_per_statement:,} per statement)")
    fill = insert_items_sql if args.fill == "sql" else insert_items
    insert_s = fill(rows, args.insert_per_statement)
    if count(EVENTS) != rows:
        raise RuntimeError(f"expected {rows:,} events after the insert, found {count(EVENTS):,}")
    vacuum(EVENTS)

    log("folding them in-process (fold_all)")
    started = time.perf_counter()
    results = fold_all(max_seconds=3600)  # the default 30 s budget would stop half-way
    fold_s = time.perf_counter() - started
    folded = sum(r.folded for r in results)
    changes, distinct = execute(f"SELECT count(*), count(DISTINCT event_id) FROM {CHANGE}")[0]
    if not folded == changes == distinct == rows:
        raise RuntimeError(
            f"fold: {folded:,} folded, {changes:,} changes, {distinct:,} distinct events; expected {rows:,}"
        )

    log("copying them aside, aged by 100 days")
    started = time.perf_counter()
    columns = [row[0] for row in execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped"
        " ORDER BY attnum",
        [EVENTS],
    )]  # fmt: skip
    aged_columns = ", ".join(
        f"{c} - interval '100 days' AS {c}" if c == "pgh_created_at" else c for c in columns
    )
    # The events are aged in the copy, which every prune starts from (restore()): no
    # UPDATE of the event table (it would take as long as the insert and double its size).
    # Logged when it is kept (--reuse): a database copied from a template holds an unlogged
    # table's rows only as far as they were written to disk.
    kind = "TABLE" if args.reuse else "UNLOGGED TABLE"
    execute(f"CREATE {kind} {BACKLOG} AS SELECT {aged_columns} FROM {EVENTS} ORDER BY pgh_id")
    backdate_s = time.perf_counter() - started
    aged = count(BACKLOG, "pgh_created_at < now() - interval '90 days'")
    if aged != rows:
        raise RuntimeError(f"{aged:,} of {rows:,} events are older than 90 days after ageing them")

    return {
        "rows": rows,
        "insert_s": insert_s,
        "insert_rows_per_s": rows / insert_s,
        "fold_s": fold_s,
        "fold_events_per_s": rows / fold_s,
        "backdate_s": backdate_s,
        "event_table_mb": scalar(f"SELECT (pg_total_relation_size('{EVENTS}') / 1e6)::float8"),
        "change_table_mb": scalar(f"SELECT (pg_total_relation_size('{CHANGE}') / 1e6)::float8"),
    }


# --------------------------------------------------------------------------- --reuse

SETUP_TABLE = "bench_retention_setup"


def _template() -> str:
    """The template database that keeps a filled, folded and aged set-up (``--reuse``)."""
    from django.conf import settings

    return f"{settings.DATABASES['default']['NAME']}_backlog"


def _maintenance(statement: str) -> list[tuple]:
    """One statement on the ``postgres`` database, in autocommit (database-level DDL)."""
    import psycopg
    from django.conf import settings
    from django.db import connection

    connection.close()
    db = settings.DATABASES["default"]
    params = {"host": db["HOST"], "port": db["PORT"], "user": db["USER"], "password": db.get("PASSWORD")}
    params = {k: v for k, v in params.items() if v}
    with psycopg.connect(dbname="postgres", autocommit=True, **params) as conn:
        cur = conn.execute(statement)
        return cur.fetchall() if cur.description else []


def _from_template(args: argparse.Namespace) -> dict | None:
    """The benchmark database recreated from the kept set-up of ``args.rows`` events, and that set-up's
    timings; None when there is none (the run then builds it, and keeps it)."""
    from django.conf import settings
    from django.core.management import call_command

    template = _template()
    if not _maintenance(f"SELECT 1 FROM pg_database WHERE datname = '{template}'"):
        return None
    name = settings.DATABASES["default"]["NAME"]
    _maintenance(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    _maintenance(f'CREATE DATABASE "{name}" TEMPLATE "{template}" STRATEGY FILE_COPY')
    setup = json.loads(scalar(f"SELECT setup FROM {SETUP_TABLE}"))
    if setup["rows"] != args.rows:
        log(f"the kept set-up holds {setup['rows']:,} events, not {args.rows:,}: building it again")
        _maintenance(f'DROP DATABASE "{template}"')
        return None
    if count(BACKLOG) != args.rows:
        raise RuntimeError(f"the kept copy of the events is incomplete: drop {template}, run again")
    log(f"reusing the set-up kept in {template} ({setup['rows']:,} events); migrating it to this checkout")
    call_command("migrate", verbosity=0, interactive=False)
    return setup


def _keep_template(setup: dict) -> None:
    """Keep the database as it is now (filled, folded, aged copy made) as the ``--reuse`` template."""
    from django.conf import settings

    execute(f"CREATE TABLE {SETUP_TABLE} (setup text)")
    execute(f"INSERT INTO {SETUP_TABLE} VALUES (%s)", [json.dumps(setup)])
    execute("CHECKPOINT")
    template = _template()
    _maintenance(f'DROP DATABASE IF EXISTS "{template}"')
    name = settings.DATABASES["default"]["NAME"]
    # FILE_COPY: the files copied after a checkpoint, not every page written to the WAL (gigabytes).
    _maintenance(f'CREATE DATABASE "{template}" TEMPLATE "{name}" STRATEGY FILE_COPY')
    log(f"set-up kept in {template} (--reuse starts from it)")


def backlog(args: argparse.Namespace, reused: dict | None) -> dict:
    """The set-up's timings: the kept set-up's (``--reuse``), or a new set-up's, kept if asked."""
    if reused is not None:
        return {**reused, "reused": True}
    setup = build_backlog(args)
    if args.reuse:
        _keep_template(setup)
    return setup


def restore(rows: int) -> float:
    """Refill the event table with the aged events, vacuum, analyse, checkpoint; seconds taken."""
    started = time.perf_counter()
    execute(f"TRUNCATE {EVENTS}")
    execute(f"INSERT INTO {EVENTS} SELECT * FROM {BACKLOG} ORDER BY pgh_id")
    vacuum(EVENTS)
    if count(EVENTS) != rows:
        raise RuntimeError(f"restore: {count(EVENTS):,} events, expected {rows:,}")
    return time.perf_counter() - started
