"""The scale benchmark: every read path at two history sizes, side by side.

Usage::

    python -m benchmarks.scale                         # 30,000 and 1,000,000 events (BENCHMARKS.md)
    python -m benchmarks.scale --big 300000            # a smaller big size
    python -m benchmarks.scale --small 30000 --big 100000 --no-report

Each size has its own database, ``audit_stream_bench_scale_<size>``
(``--database-url`` names the prefix; it must contain "bench"): dropped,
recreated and filled set-based, or with ``--reuse`` kept from an earlier run
that filled it completely. Then every page and call is timed side by side:
for each path, its median at the small size and right after at the big size
(one warm-up, then the median of 5 each), so both sizes share the machine's
load of the moment. The table shows both sizes, their ratio, and the query
count of each page at the big size.

What a size N holds (tests.settings, tests.testapp):

* N product events: products inserted ``INSERT ... SELECT generate_series``
  in chunks of 100,000, each chunk one statement (the statement trigger
  writes every row's event) in its own context; 1% of them deleted (their
  delete events: the admin's "deleted objects"); one product updated
  ``--hot`` times (its long history: the admin History page and
  ``AggregateEvent.objects.target()``). Then everything is folded by
  ``fold_all()``: the Change feed holds N changes.
* N webhook messages over 7 days for three endpoints (90% delivered, 6% dead,
  3% pending, 1% sending) and their attempts (about 1.4 per message), all
  inserted set-based; fold runs and contexts as the dashboard benchmark has.

Nothing is vacuumed; the tables are analysed once filled (as autovacuum's
analyse would after such loads), unless ``--no-analyze``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import statistics
import sys
import time

from benchmarks import dashboard as base
from benchmarks.sections import replace_section

SECTION = "## Scale (benchmarks/scale.py)"
COMMAND = "python -m benchmarks.scale"
DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/audit_stream_bench_scale"
CHUNK = 100_000
REPEAT = 5
#: The issue's targets: under this at the big size, and within 2x of the small size.
TARGET_MS = 200.0
TARGET_RATIO = 2.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.split("\n")[0])
    parser.add_argument("--small", type=int, default=30_000, help="events (and messages) of the small size")
    parser.add_argument("--big", type=int, default=1_000_000, help="events (and messages) of the big size")
    parser.add_argument("--hot", type=int, default=20_000, help="events of the one long-lived product")
    parser.add_argument(
        "--database-url", default=DEFAULT_DATABASE_URL, help="prefix of the databases: dropped and recreated!"
    )
    parser.add_argument("--reuse", action="store_true", help="keep databases an earlier run filled")
    parser.add_argument("--no-analyze", action="store_true", help="leave the tables without statistics")
    parser.add_argument("--no-report", action="store_true", help="print only, leave BENCHMARKS.md alone")
    return parser.parse_args(argv)


# --------------------------------------------------------------------------- filling

# One chunk of products, one statement: the statement trigger writes one event per row.
_PRODUCTS_SQL = """
INSERT INTO testapp_product (name, price, stock, updated_at)
SELECT 'product ' || i, i %% 1000, i %% 97, now()
FROM generate_series(%(first)s, %(last)s) AS i
"""

# The long-lived product: `hot` updates, one statement each (one event each).
_HOT_SQL = """
DO $$ BEGIN
    FOR i IN 1..{hot} LOOP
        UPDATE testapp_product SET stock = stock + 1 WHERE id = {pk};
    END LOOP;
END $$
"""


def write_history(events: int, hot: int) -> int:
    """About ``events`` product events, unfolded (the module's docstring); the hot product's id."""
    import audit_stream
    from tests.testapp.models import Product

    hot_pk = Product.objects.create(name="long-lived", price=1).pk
    inserted = max(events - hot - 1 - events // 100, 1)
    for first in range(1, inserted + 1, CHUNK):
        last = min(first + CHUNK - 1, inserted)
        with audit_stream.context(user=1 + (first // CHUNK) % 5, command="benchmark"):
            base.execute(_PRODUCTS_SQL, {"first": first, "last": last})
    base.execute(_HOT_SQL.format(hot=int(hot), pk=int(hot_pk)))
    with audit_stream.context(user=9, command="benchmark"):
        base.execute("DELETE FROM testapp_product WHERE id %% 100 = 50 AND id <> %s", [hot_pk])
    return hot_pk


def fill(events: int, hot: int, messages: int) -> dict:
    """Products and their events, folded; messages, attempts and side tables. Returns what was made."""
    from audit_stream.stream import fold

    began = time.perf_counter()
    hot_pk = write_history(events, hot)
    written = time.perf_counter() - began
    base.log(f"  {base.scalar('SELECT count(*) FROM testapp_productevent'):,} events in {written:.0f} s")
    began = time.perf_counter()
    fold.fold_all()
    folded = time.perf_counter() - began
    base.log(f"  folded in {folded:.0f} s")
    side = argparse.Namespace(messages=messages, fold_runs=max(messages // 5, 1), contexts=messages // 10)
    base.fill_side_tables(side)
    deleted = base.scalar(
        "SELECT pgh_obj_id FROM testapp_productevent WHERE pgh_label = 'before_delete'"
        " ORDER BY pgh_id LIMIT 1"
    )
    made = {"hot_pk": hot_pk, "deleted_pk": deleted, "write_s": written, "fold_s": folded}
    base.execute("CREATE TABLE bench_scale_made (made jsonb NOT NULL)")
    base.execute("INSERT INTO bench_scale_made VALUES (%s::jsonb)", [json.dumps(made)])
    return made


# --------------------------------------------------------------------------- timing


def _median_ms(call) -> float:
    call()
    samples = []
    for _ in range(REPEAT):
        began = time.perf_counter()
        call()
        samples.append((time.perf_counter() - began) * 1000)
    return statistics.median(samples)


def admin_pages(made: dict) -> list[tuple[str, str, dict]]:
    """(label, url, query) of the admin pages that read history."""
    from django.urls import reverse

    hot, deleted = made["hot_pk"], made["deleted_pk"]
    history = reverse("admin:testapp_product_history", args=[hot])
    return [
        ("admin Change changelist", reverse("admin:audit_stream_change_changelist"), {}),
        ("admin Change changelist, model", reverse("admin:audit_stream_change_changelist"),
         {"model": "testapp.product"}),
        ("admin event changelist", reverse("admin:testapp_productevent_changelist"), {}),
        ("admin event changelist, a deleted object", reverse("admin:testapp_productevent_changelist"),
         {"pgh_obj__exact": str(deleted)}),
        ("admin deleted objects", reverse("admin:testapp_product_deleted"), {}),
        ("admin History, first page", history, {}),
        ("admin History, last page", history, {"p": "1000000"}),  # out of range: the last page
    ]  # fmt: skip


def calls(made: dict) -> list[tuple[str, object]]:
    """(label, callable) of the in-process reads: commands and the aggregate."""
    from django.core.management import call_command

    from audit_stream.models import AggregateEvent
    from tests.testapp.models import Product

    hot = Product.objects.get(pk=made["hot_pk"])
    count = AggregateEvent.objects.target(hot).count()

    def prune_dry_run():
        call_command("prune_history", "--dry-run", "--keep-last", "10", stdout=io.StringIO())

    return [
        ("prune_history --dry-run --keep-last 10", prune_dry_run),
        ("AggregateEvent target()[:50]", lambda: list(AggregateEvent.objects.target(hot)[:50])),
        ("AggregateEvent target(), last 50", lambda: list(AggregateEvent.objects.target(hot)[count - 50 :])),
    ]


def database_name(args: argparse.Namespace, events: int) -> str:
    return f"{args.database_url.rsplit('/', 1)[-1]}_{events}"


def use_database(name: str) -> None:
    """Point the default connection at ``name`` (closed and reopened on its next query)."""
    from django.conf import settings
    from django.core.cache import caches
    from django.db import connection

    connection.close()
    connection.settings_dict["NAME"] = settings.DATABASES["default"]["NAME"] = name
    for cache in caches.all():
        cache.clear()  # nothing one size cached may answer for the other


def _filled() -> dict | None:
    """What an earlier run made in the current database, if it finished filling it."""
    from django.db import DatabaseError

    try:
        made = base.scalar("SELECT made FROM bench_scale_made")
    except DatabaseError:
        return None
    return json.loads(made) if isinstance(made, str) else made


def prepare(args: argparse.Namespace, events: int) -> dict:
    """The database of one size, filled (or kept, with ``--reuse``); returns what it holds."""
    from django.core.management import call_command
    from django.db import connection

    name = database_name(args, events)
    use_database(name)
    if args.reuse:
        made = _filled()  # None if the database does not exist or was not filled to the end
        connection.close()
        if made is not None:
            base.log(f"size {events:,}: reusing {name} (migrated to this checkout, analysed)")
            call_command("migrate", verbosity=0)
            if not args.no_analyze:
                base.execute("ANALYZE")
            return made
    base.log(f"size {events:,}: recreating {name}")
    base.recreate_database()
    call_command("migrate", verbosity=0)
    made = fill(events, min(args.hot, events // 2), events)
    if not args.no_analyze:
        base.execute("ANALYZE")
    return made


def _paths(made: dict) -> list[tuple[str, object]]:
    """(label, timer) of every path of one database: pages (median and queries) and calls (median)."""
    client = base.operator_client()
    found = []
    for label, url, params in [*base.page_list(), *admin_pages(made)]:
        if label == "changes, user":
            # User 1 wrote the first chunk of products: changes at both sizes (the dashboard
            # benchmark's user 3 has none at 30,000, so that page was empty there, full at 1M).
            params = {"user": "1"}

        def page(client=client, url=url, params=params) -> dict:
            timed = base.time_page(client, url, params)
            return {"ms": timed["median_ms"], "queries": timed["queries"]}

        found.append((label, page))
    for label, call in calls(made):
        found.append((label, lambda call=call: {"ms": _median_ms(call), "queries": None}))
    return found


def measure(args: argparse.Namespace, made: dict[int, dict]) -> tuple[dict, dict]:
    """Median ms (and queries, for pages) of every path at both sizes, timed one path at a time."""
    paths = {}
    for events in (args.small, args.big):
        use_database(database_name(args, events))
        paths[events] = dict(_paths(made[events]))
    results = {args.small: {}, args.big: {}}
    for label in paths[args.big]:
        for events in (args.small, args.big):
            use_database(database_name(args, events))
            try:
                results[events][label] = paths[events][label]()
            except Exception as exc:  # report, never hide: a path that fails is a finding
                results[events][label] = {"error": f"{type(exc).__name__}: {exc}"[:120]}
        small, big = results[args.small][label], results[args.big][label]
        base.log(f"  {label}: {small.get('ms', small.get('error'))} -> {big.get('ms', big.get('error'))}")
    return results[args.small], results[args.big]


# --------------------------------------------------------------------------- report


def markdown(args: argparse.Namespace, small: dict, big: dict) -> str:
    info = base.machine_info()
    lines = [
        SECTION,
        "",
        f"Measured {dt.date.today():%Y-%m-%d} with `{COMMAND} --small {args.small} --big {args.big}`"
        f" ({info['nproc']} cores, load average {os.getloadavg()[0]:.1f} at the end, PostgreSQL"
        f" {info['postgresql']}, git {info['git']})."
        " Side by side: each path at the small size, then at once at the big size, both in one run."
        " Median of 5 after a warm-up; nothing vacuumed"
        + ("" if args.no_analyze else ", tables analysed once filled")
        + ". Target: under 200 ms at the big size and within 2x of the small size.",
        "",
        f"| page or call | {args.small:,} | {args.big:,} | ratio | queries |",
        "|---|---|---|---|---|",
    ]
    for label in big:
        a, b = small.get(label, {}), big[label]
        if "error" in b or "error" in a:
            lines.append(f"| {label} | {a.get('error', '')} | {b.get('error', '')} | | |")
            continue
        ratio = b["ms"] / a["ms"] if a.get("ms") else float("nan")
        flag = " ⚠" if b["ms"] > TARGET_MS or ratio > TARGET_RATIO else ""
        queries = "" if b["queries"] is None else str(b["queries"])
        lines.append(f"| {label} | {a['ms']:.1f} ms | {b['ms']:.1f} ms{flag} | {ratio:.2f}x | {queries} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    base.configure(argparse.Namespace(database_url=args.database_url))
    import django
    from django.test.utils import setup_test_environment

    django.setup()
    setup_test_environment()  # the test client's "testserver" host is allowed
    made = {events: prepare(args, events) for events in (args.small, args.big)}
    small, big = measure(args, made)
    section = markdown(args, small, big)
    print(section)
    if not args.no_report:
        replace_section(SECTION, section)


if __name__ == "__main__":
    sys.exit(main())
