"""The dashboard benchmark: how long each page takes on a big database.

Usage::

    python -m benchmarks.dashboard            # 1M events, 100k messages (about 6 minutes): BENCHMARKS.md
    python -m benchmarks.dashboard --quick    # 100k events, 10k messages: printed only

It drops and recreates the database ``audit_stream_bench_dashboard``
(``--database-url``; the name must contain "bench") and uses the test suite's
settings and models (``tests.settings``, ``tests.testapp``).

The database is filled the way production fills it: products are written with
the ORM's ``bulk_create`` in chunks, with the triggers on, so every row writes
its event; then ``audit_stream.stream.fold.fold_all()`` folds them into the
change feed. Webhook messages, attempts, fold runs, contexts and retention
runs, which the pages read but which do not need the triggers, are inserted
directly with ``INSERT ... SELECT generate_series``. Then each page is fetched
with Django's test client as a logged-in operator: one warm-up, then the
median of 5. The overview is also timed with a large backlog (events written
but not folded), the case an operator opens the dashboard for.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.sections import replace_section

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/audit_stream_bench_dashboard"
SECTION = "## Dashboard (benchmarks/dashboard.py)"
COMMAND = "python -m benchmarks.dashboard"
PRODUCTS = "testapp_productevent"
REPEAT = 5
CHUNK = 50_000
#: Pages slower than this (median, ms) are flagged in the report.
BUDGET_MS = 250.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a tenth of the sizes; BENCHMARKS.md untouched")
    parser.add_argument("--database-url", default=DEFAULT_DATABASE_URL, help="dropped and recreated!")
    parser.add_argument("--no-report", action="store_true", help="print only, leave BENCHMARKS.md alone")
    args = parser.parse_args(argv)
    scale = 10 if args.quick else 1
    args.events = 1_000_000 // scale
    args.backlog = 100_000 // scale
    args.messages = 100_000 // scale
    args.fold_runs = 200_000 // scale
    args.contexts = 100_000 // scale
    return args


def configure(args: argparse.Namespace) -> None:
    """Point Django at the benchmark database, never at one whose name lacks "bench"."""
    name = args.database_url.rsplit("/", 1)[-1]
    if "bench" not in name:
        raise SystemExit(f"refusing to drop {name!r}: the benchmark database's name must contain 'bench'")
    os.environ["DJANGO_SETTINGS_MODULE"] = "tests.settings"
    os.environ["DATABASE_URL"] = args.database_url
    os.environ["AUDIT_STREAM_SETTINGS"] = "{}"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def execute(statement: str, params=None) -> list[tuple]:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(statement, params)
        return cursor.fetchall() if cursor.description else []


def scalar(statement: str, params=None):
    return execute(statement, params)[0][0]


# --------------------------------------------------------------------------- the database


def recreate_database() -> None:
    """Drop and create the benchmark database from the ``postgres`` maintenance database."""
    import psycopg
    from django.conf import settings
    from django.db import connection
    from psycopg import sql

    connection.close()
    db = settings.DATABASES["default"]
    params = {"host": db["HOST"], "port": db["PORT"], "user": db["USER"], "password": db.get("PASSWORD")}
    params = {k: v for k, v in params.items() if v}
    with psycopg.connect(dbname="postgres", autocommit=True, **params) as conn:
        name = sql.Identifier(db["NAME"])
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(name))


def write_products(count: int, start: int) -> float:
    """Write ``count`` products with ``bulk_create``, a transaction per chunk, triggers on; return seconds."""
    import audit_stream
    from tests.testapp.models import Product

    began = time.perf_counter()
    for offset in range(0, count, CHUNK):
        size = min(CHUNK, count - offset)
        first = start + offset
        # Each chunk in its own context, as if written by one of five users.
        with audit_stream.context(user=1 + (first // CHUNK) % 5, command="benchmark"):
            Product.objects.bulk_create(
                Product(name=f"product {i}", price=i % 1000, stock=i % 97) for i in range(first, first + size)
            )
    return time.perf_counter() - began


# Webhook messages for three endpoints over the last 7 days: 90% delivered,
# 6% dead, 3% pending, 1% sending. Each message carries a payload of a typical size.
_MESSAGES_SQL = """
INSERT INTO audit_stream_webhookmessage
    (id, endpoint_id, change_id, event_type, payload, status, attempts, next_attempt_at,
     lease_until, last_error, created_at, delivered_at)
SELECT gen_random_uuid(), (%(endpoints)s::bigint[])[1 + i %% 3], i, 'testapp.product.snapshot',
       jsonb_build_object('type', 'testapp.product.snapshot', 'timestamp', now(),
                          'data', jsonb_build_object('object_id', i::text, 'diff',
                                  jsonb_build_object('price', jsonb_build_array(i %% 100, i %% 100 + 1)))),
       s.status,
       CASE s.status WHEN 'dead' THEN 8 WHEN 'delivered' THEN 1 ELSE 1 END,
       created + interval '5 minutes',
       CASE s.status WHEN 'sending' THEN now() + interval '2 minutes' END,
       CASE WHEN s.status IN ('dead', 'pending') THEN 'HTTP 503' ELSE '' END,
       created,
       CASE s.status WHEN 'delivered' THEN created + interval '80 milliseconds' END
FROM generate_series(1, %(count)s) AS i,
     LATERAL (SELECT now() - (%(count)s - i) * (interval '7 days' / %(count)s) AS created) AS c,
     LATERAL (SELECT CASE WHEN i %% 100 < 90 THEN 'delivered' WHEN i %% 100 < 96 THEN 'dead'
                          WHEN i %% 100 < 99 THEN 'pending' ELSE 'sending' END AS status) AS s
"""

# Attempts: one success per delivered message, eight failures per dead one,
# one failure per pending one.
_ATTEMPTS_SQL = """
INSERT INTO audit_stream_webhookattempt
    (message_id, attempted_at, status_code, duration_ms, response_excerpt, error, succeeded)
SELECT m.id, m.created_at + n * interval '1 minute',
       CASE WHEN m.status = 'delivered' THEN 200 ELSE 503 END, 40 + n,
       CASE WHEN m.status = 'delivered' THEN 'ok' ELSE 'upstream unavailable' END,
       CASE WHEN m.status = 'delivered' THEN '' ELSE 'HTTP 503' END,
       m.status = 'delivered'
FROM audit_stream_webhookmessage AS m,
     generate_series(1, CASE m.status WHEN 'dead' THEN 8 WHEN 'sending' THEN 0 ELSE 1 END) AS n
"""

# Fold runs, one every few seconds over the last week, the chart's hour included.
_FOLD_RUNS_SQL = """
INSERT INTO audit_stream_foldrun (event_table, started_at, finished_at, folded, lag_ms)
SELECT %(table)s, t - interval '40 milliseconds', t, 1 + i %% 500, 50 + i %% 900
FROM generate_series(1, %(count)s) AS i,
     LATERAL (SELECT now() - i * (interval '7 days' / %(count)s) AS t) AS c
"""

# Contexts of past requests, most no longer referenced by any change.
_CONTEXTS_SQL = """
INSERT INTO audit_stream_context (id, created_at, updated_at, metadata)
SELECT gen_random_uuid(), now() - i * interval '5 seconds', now() - i * interval '5 seconds',
       jsonb_build_object('user', 1 + i %% 1000, 'url', '/admin/testapp/product/' || i || '/change/')
FROM generate_series(1, %(count)s) AS i
"""


def fill_side_tables(args: argparse.Namespace) -> None:
    """Endpoints, messages, attempts, fold runs, heartbeats, retention runs and contexts."""
    from audit_stream.models import Heartbeat, RetentionRun
    from audit_stream.webhooks.models import WebhookEndpoint

    endpoints = [
        WebhookEndpoint.objects.create(
            url=f"http://93.184.215.{14 + i}/hooks/audit", description=f"bench {i}"
        ).pk
        for i in range(3)
    ]
    execute(_MESSAGES_SQL, {"endpoints": endpoints, "count": args.messages})
    execute(_ATTEMPTS_SQL)
    execute(_FOLD_RUNS_SQL, {"table": PRODUCTS, "count": args.fold_runs})
    execute(_CONTEXTS_SQL, {"count": args.contexts})
    for i in range(20):
        kind = ["listener", "worker", "worker", "beat"][i % 4]
        Heartbeat.objects.create(name=f"{kind}@bench:{i}", kind=kind, host="bench", pid=1000 + i)
    RetentionRun.objects.bulk_create(
        RetentionRun(trigger="beat", rows={PRODUCTS: i, "changes": i // 2}, finished_at=None)
        for i in range(1000)
    )


def analyze() -> None:
    execute("VACUUM ANALYZE")


# --------------------------------------------------------------------------- timing


def operator_client():
    """A test client logged in as a superuser."""
    from django.contrib.auth import get_user_model
    from django.test import Client

    user = get_user_model().objects.filter(username="bench-operator").first()
    if user is None:
        user = get_user_model().objects.create_superuser("bench-operator", "ops@example.com", "unused")
    client = Client()
    client.force_login(user)
    return client


class QueryTimer:
    """Counts the SQL statements of a request and times the slowest (an execute wrapper)."""

    def __init__(self) -> None:
        self.count, self.slowest_ms = 0, 0.0

    def __call__(self, execute, sql, params, many, context):
        began = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            self.count += 1
            self.slowest_ms = max(self.slowest_ms, (time.perf_counter() - began) * 1000)


def time_page(client, url: str, params: dict | None = None) -> dict:
    """One warm-up, then ``REPEAT`` timed GETs; the median, and the queries of the warm-up request."""
    from django.db import connection

    timer = QueryTimer()
    with connection.execute_wrapper(timer):
        response = client.get(url, params or {})
    if response.status_code != 200:
        raise RuntimeError(f"{url} {params}: HTTP {response.status_code}")
    samples = []
    for _ in range(REPEAT):
        began = time.perf_counter()
        response = client.get(url, params or {})
        samples.append((time.perf_counter() - began) * 1000)
        assert response.status_code == 200
    return {
        "median_ms": statistics.median(samples),
        "min_ms": min(samples),
        "max_ms": max(samples),
        "queries": timer.count,
        "slowest_query_ms": timer.slowest_ms,
        "bytes": len(response.content),
    }


def _reverse(name: str, *args) -> str:
    from django.urls import reverse

    return reverse(f"audit_stream:{name}", args=args)


def stream_pages() -> list[tuple[str, str, dict]]:
    """The pages that show the stream's backlog."""
    return [
        ("overview", _reverse("overview"), {}),
        ("api/overview.json", _reverse("overview_json"), {}),
        ("metrics", _reverse("metrics"), {}),
    ]


def page_list() -> list[tuple[str, str, dict]]:
    """(label, url, query) of every page, with the filters an operator uses."""
    from audit_stream.models import Change
    from audit_stream.webhooks.models import WebhookEndpoint, WebhookMessage

    endpoint = WebhookEndpoint.objects.order_by("pk").first()
    dead = WebhookMessage.objects.filter(endpoint=endpoint, status="dead").order_by("-created_at").first()
    newest = Change.objects.order_by("-id").values_list("id", flat=True).first()
    middle_object = (
        Change.objects.filter(id__lte=newest // 2).order_by("-id").values_list("object_id", flat=True)[0]
    )
    day = dt.datetime.now(dt.UTC) - dt.timedelta(days=3)
    return [
        *stream_pages(),
        ("webhooks", _reverse("webhooks"), {}),
        ("endpoint, all messages", _reverse("endpoint", endpoint.pk), {}),
        ("endpoint, status=dead", _reverse("endpoint", endpoint.pk), {"status": "dead"}),
        (
            "endpoint, one day",
            _reverse("endpoint", endpoint.pk),
            {"since": f"{day:%Y-%m-%dT%H:%M}", "until": f"{day + dt.timedelta(days=1):%Y-%m-%dT%H:%M}"},
        ),
        ("message and its attempts", _reverse("message", dead.pk), {}),
        ("retention", _reverse("retention"), {}),
        ("changes", _reverse("changes"), {}),
        ("changes, page at the middle", _reverse("changes"), {"before": str(newest // 2)}),
        ("changes, model", _reverse("changes"), {"model": "testapp.product"}),
        ("changes, object id only", _reverse("changes"), {"object_id": middle_object}),
        ("changes, label", _reverse("changes"), {"label": "snapshot"}),
        ("changes, user", _reverse("changes"), {"user": "3"}),
    ]


def time_stream_pages(client, label: str) -> list[dict]:
    rows = []
    for name, url, params in stream_pages():
        rows.append({"state": label, "page": name, **time_page(client, url, params)})
        log(f"  {label}: {name}: {rows[-1]['median_ms']:.1f} ms")
    return rows


def time_sql(sql: str, params=None) -> float:
    """Median ms of ``REPEAT`` runs of one query (after a warm-up), in a transaction with JIT off."""
    from django.db import transaction

    samples = []
    with transaction.atomic():
        execute("SET LOCAL jit = off")
        execute(sql, params)
        for _ in range(REPEAT):
            began = time.perf_counter()
            execute(sql, params)
            samples.append((time.perf_counter() - began) * 1000)
    return statistics.median(samples)


# The 24-hour success rate with an endpoint column on attempts: one index range per endpoint.
_PROPOSED_ATTEMPTS_SQL = """
SELECT ep.id, s.*
FROM audit_stream_webhookendpoint AS ep,
     LATERAL (SELECT count(*), count(*) FILTER (WHERE a.succeeded),
                     (array_agg(a.error ORDER BY a.attempted_at DESC) FILTER (WHERE NOT a.succeeded))[1],
                     max(a.attempted_at) FILTER (WHERE NOT a.succeeded)
              FROM audit_stream_webhookattempt AS a
              WHERE a.bench_endpoint_id = ep.id AND a.attempted_at >= now() - interval '24 hours') AS s
"""
_CONTEXTS_OF_USER_SQL = (
    "SELECT id FROM audit_stream_context WHERE (metadata -> 'user') = %s::jsonb LIMIT 50001"
)


def time_proposals() -> list[dict]:
    """The two slowest queries, before and after the schema change proposed for each."""
    from audit_stream.dashboard import queries

    found = []
    before = time_sql(queries._ATTEMPTS_24H_SQL, {"endpoint": None})
    execute("ALTER TABLE audit_stream_webhookattempt ADD COLUMN bench_endpoint_id bigint")
    execute(
        "UPDATE audit_stream_webhookattempt AS a SET bench_endpoint_id = m.endpoint_id"
        " FROM audit_stream_webhookmessage AS m WHERE m.id = a.message_id"
    )
    execute(
        "CREATE INDEX bench_attempt_endpoint ON audit_stream_webhookattempt (bench_endpoint_id, attempted_at)"
    )
    execute("VACUUM ANALYZE audit_stream_webhookattempt")
    found.append(
        {
            "query": "webhooks: attempts of the last 24 hours per endpoint",
            "before_ms": before,
            "after_ms": time_sql(_PROPOSED_ATTEMPTS_SQL),
            "change": "`WebhookAttempt.endpoint` (set on insert) and an index on `(endpoint, attempted_at)`",
        }
    )
    execute("ALTER TABLE audit_stream_webhookattempt DROP COLUMN bench_endpoint_id")

    before = time_sql(_CONTEXTS_OF_USER_SQL, ["3"])
    execute("CREATE INDEX bench_context_user ON audit_stream_context ((metadata -> 'user'))")
    execute("ANALYZE audit_stream_context")
    found.append(
        {
            "query": "changes, user: the user's contexts",
            "before_ms": before,
            "after_ms": time_sql(_CONTEXTS_OF_USER_SQL, ["3"]),
            "change": "an index on `Context` `(metadata -> 'user')`",
        }
    )
    execute("DROP INDEX bench_context_user")
    for row in found:
        log(f"  {row['query']}: {row['before_ms']:.1f} ms -> {row['after_ms']:.1f} ms")
    return found


def check_backlog(expected: int) -> None:
    """The dashboard's backlog figure must be exact (up to its cap)."""
    from audit_stream.dashboard import queries

    found = {t.event_table: t for t in queries.stream_tables()}[PRODUCTS]
    if found.backlog_exact != (expected <= queries.BACKLOG_EXACT):
        raise RuntimeError(f"backlog of {expected} reported as exact={found.backlog_exact}")
    # Past the exact count, the estimate may be off by the ids of the range already folded.
    tolerance = 0 if found.backlog_exact else expected // 100
    if abs(found.backlog - expected) > tolerance:
        raise RuntimeError(f"backlog {found.backlog}, expected {expected}")


# --------------------------------------------------------------------------- report


def machine_info() -> dict:
    import django

    try:
        git = subprocess.run(
            ["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        git = "unknown"
    return {
        "nproc": os.cpu_count(),
        "postgresql": scalar("SHOW server_version"),
        "shared_buffers": scalar("SHOW shared_buffers"),
        "work_mem": scalar("SHOW work_mem"),
        "python": platform.python_version(),
        "django": django.__version__,
        "git": git,
    }


def sizes() -> dict[str, tuple[int, str]]:
    """Rows and total size of the tables that matter."""
    found = {}
    for table in (
        PRODUCTS,
        "audit_stream_change",
        "audit_stream_context",
        "audit_stream_webhookmessage",
        "audit_stream_webhookattempt",
        "audit_stream_foldrun",
    ):
        found[table] = (
            scalar(f"SELECT count(*) FROM {table}"),  # fixed table names, not input
            scalar("SELECT pg_size_pretty(pg_total_relation_size(%s::regclass))", [table]),
        )
    return found


def markdown(args, info, table_sizes, fill, rows, proposals) -> str:
    from audit_stream.dashboard import queries

    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        SECTION,
        "",
        f"Measured {now} with `{COMMAND}`: every page fetched with Django's test client as a logged-in"
        f" superuser, one warm-up then {REPEAT} timed requests, medians (template rendering included).",
        "",
        f"Machine: {info['nproc']} cores; PostgreSQL {info['postgresql']} (shared_buffers"
        f" {info['shared_buffers']}, work_mem {info['work_mem']}); Python {info['python']},"
        f" Django {info['django']}; sources {info['git']}.",
        "",
        "Database (`tests.settings`, models of `tests.testapp`):",
        "",
        "| table | rows | size |",
        "|---|--:|--:|",
        *(f"| `{table}` | {rows_:,} | {size} |" for table, (rows_, size) in table_sizes.items()),
        "",
        f"Filled with `bulk_create` in chunks of {CHUNK:,} rows, triggers on: {args.events:,} events in"
        f" {fill['write_s']:.0f} s; folded by `fold_all()` in {fill['fold_s']:.0f} s"
        f" ({args.events / fill['fold_s']:,.0f} events/s). Messages (90% delivered, 6% dead, 3% pending,"
        " 1% sending, over 7 days, three endpoints), attempts, fold runs (over 7 days), contexts and 1,000"
        " retention runs inserted directly.",
        "",
        "| page | state | median ms | min-max ms | queries | slowest query ms |",
        "|---|---|--:|--:|--:|--:|",
    ]
    order = {"caught up": 0}
    for row in sorted(rows, key=lambda r: order.get(r["state"], 1)):
        flag = " ⚠" if row["median_ms"] > BUDGET_MS else ""
        lines.append(
            f"| {row['page']} | {row['state']} | {row['median_ms']:.1f}{flag} |"
            f" {row['min_ms']:.1f}-{row['max_ms']:.1f} | {row['queries']} | {row['slowest_query_ms']:.1f} |"
        )
    lines += [
        "",
        "States: *caught up*: every event folded; *backlog N*: N events written after the last fold. The"
        f" backlog is counted exactly up to {queries.BACKLOG_EXACT:,} events per table and estimated beyond"
        " from the `pgh_id` range (shown as `≈ N`); the benchmark checks both against what it wrote.",
        "",
        "Notes:",
        "",
        "- The backlog is counted over the events the checkpoint has not folded, found with the b-tree index"
        " on `pgh_xid` (BRIN before 2026-12-03), so a caught-up table costs almost nothing whatever its size;"
        " a backlog costs in proportion to its size, up to the exact count's limit.",
        "- Lists are keyset-paginated (`?before=`): a page in the middle of a million changes costs what the"
        ' first one does. No page counts a whole table; the totals shown ("about N") are'
        " `pg_class.reltuples` estimates.",
        "- Messages of one endpoint come from the `(endpoint, status, created_at)` index, one ordered range"
        " per status, merged (`UNION ALL` of four index scans, then the first page).",
        "- The metrics endpoint and the webhooks pages read attempt counts kept per endpoint and hour"
        " (since 2026-12-03; before, they read the attempts themselves), and count messages per endpoint"
        " and status through the status index, up to 10,000.",
        "- Every page reads in one transaction with `SET LOCAL jit = off`: on tables this size the planner's"
        " estimates cross `jit_above_cost`, and compiling took longer (60-250 ms) than running the queries.",
        "- Two figures read more than they need, for want of an index; the table below times their queries"
        " (median of 5, `jit = off`) as they are and with the change proposed for each, made on this"
        " database after the page timings:",
        "",
        "| query | as it is, ms | with the change, ms | change |",
        "|---|--:|--:|---|",
        *(
            f"| {p['query']} | {p['before_ms']:.1f} | {p['after_ms']:.1f} | {p['change']} |"
            for p in proposals
        ),
    ]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    configure(args)
    sys.path.insert(0, str(ROOT))
    started = time.monotonic()

    import django

    django.setup()
    from django.core.management import call_command
    from django.test.utils import setup_test_environment

    from audit_stream.stream import fold

    setup_test_environment()  # the test client's "testserver" host is allowed

    log(f"recreating {args.database_url.rsplit('/', 1)[-1]} and migrating")
    recreate_database()
    call_command("migrate", verbosity=0, interactive=False)
    info = machine_info()

    log(f"writing {args.events:,} events (bulk_create, triggers on)")
    write_s = write_products(args.events, 0)
    execute(f"VACUUM ANALYZE {PRODUCTS}")
    client = operator_client()
    rows = []

    log(f"  {write_s:.1f} s; timing the stream pages with {args.events:,} unfolded events")
    check_backlog(args.events)
    rows += time_stream_pages(client, f"backlog {args.events:,}")

    log("folding")
    began = time.perf_counter()
    results = fold.fold_all(max_seconds=3600)
    fold_s = time.perf_counter() - began
    folded = sum(r.folded for r in results)
    if folded < args.events:
        raise RuntimeError(f"folded {folded} events, expected at least {args.events}")
    log(f"  {folded:,} events in {fold_s:.1f} s; filling messages, attempts, fold runs, contexts")
    # After the fold: its endpoints would otherwise get a message per change.
    fill_side_tables(args)
    analyze()
    check_backlog(0)

    log("timing every page, caught up")
    for name, url, params in page_list():
        rows.append({"state": "caught up", "page": name, **time_page(client, url, params)})
        log(f"  {name}: {rows[-1]['median_ms']:.1f} ms ({rows[-1]['queries']} queries)")

    log("timing the two slowest queries, as they are and with the schema changes proposed for them")
    proposals = time_proposals()

    log(f"writing {args.backlog:,} more events, not folded")
    write_products(args.backlog, args.events)
    execute(f"ANALYZE {PRODUCTS}")
    check_backlog(args.backlog)
    rows += time_stream_pages(client, f"backlog {args.backlog:,}")

    table_sizes = sizes()
    section = markdown(args, info, table_sizes, {"write_s": write_s, "fold_s": fold_s}, rows, proposals)
    print(section)
    if not args.quick and not args.no_report:
        replace_section(SECTION, section)
        log("BENCHMARKS.md updated")
    log(f"done in {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
