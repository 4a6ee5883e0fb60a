"""The undo benchmark: undo one request that made 10,000 changes over 3 related models.

Usage::

    python -m benchmarks.undo            # 10,000 changes (about a minute): BENCHMARKS.md
    python -m benchmarks.undo --quick    # 1,000 changes: printed only

It drops and recreates the database ``audit_stream_bench_undo``
(``--database-url``; the name must contain "bench") and uses the demo shop's
models (``demo.settings``): ``Customer`` <- ``Order`` <- ``OrderLine``, all
tracked with the default events, ``OrderLine`` also pointing to ``Product``.

Set-up: 3,000 customers, each with one order of two lines, and 100 products,
written with ``bulk_create`` (triggers on); then 1,000 updates of the 100
products (100,000 product events): history the undo has to look through but
must leave alone.

The request, in one ``audit_stream.context`` and one transaction, as a bad
import would do it (at full size; ``--quick`` takes a tenth):

* creates 1,000 customers, an order for each, two lines per order (4,000 creates);
* updates the status of 2,000 orders and the name of 1,000 customers (3,000 updates);
* deletes 1,000 orders, whose 2,000 lines go with them by Django's cascade (3,000 deletes).

Measured: ``undo(context, dry_run=True)`` and ``undo(context)``, wall time and
the number of SQL statements (an execute wrapper), three times (the request is
made again before each undo), medians. After each undo the three tables are
compared with their state before the request (an md5 of every row): equal, or
the benchmark fails. The same is run at a tenth of the size to show that the
number of statements does not depend on the number of objects.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.sections import replace_section

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/audit_stream_bench_undo"
SECTION = "## Undo (benchmarks/undo.py)"
COMMAND = "python -m benchmarks.undo"
REPEAT = 3
TARGET_S = 5.0
TABLES = ["shop_customer", "shop_order", "shop_orderline"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1,000 changes; BENCHMARKS.md untouched")
    parser.add_argument("--database-url", default=DEFAULT_DATABASE_URL, help="dropped and recreated!")
    parser.add_argument("--no-report", action="store_true", help="print only, leave BENCHMARKS.md alone")
    return parser.parse_args(argv)


def configure(args: argparse.Namespace) -> None:
    name = args.database_url.rsplit("/", 1)[-1]
    if "bench" not in name:
        raise SystemExit(f"refusing to drop {name!r}: the benchmark database's name must contain 'bench'")
    os.environ["DJANGO_SETTINGS_MODULE"] = "demo.settings"
    os.environ["DATABASE_URL"] = args.database_url


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def execute(statement: str, params=None) -> list[tuple]:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(statement, params)
        return cursor.fetchall() if cursor.description else []


def recreate_database() -> None:
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


def set_up(scale: int) -> dict:
    """Customers with orders and lines, products, and product history the undo must skip."""
    from decimal import Decimal

    from django.db.models import F

    from demo.shop.models import Customer, Order, OrderLine, Product

    began = time.perf_counter()
    products = Product.objects.bulk_create(
        Product(sku=f"SKU-{i}", name=f"product {i}", category="coffee", price=Decimal("9.90"), stock=100)
        for i in range(100)
    )
    customers = Customer.objects.bulk_create(
        Customer(name=f"customer {i}", email=f"c{i}@example.com") for i in range(3000 // scale)
    )
    orders = Order.objects.bulk_create(Order(customer=c, status="pending") for c in customers)
    OrderLine.objects.bulk_create(
        OrderLine(order=o, product=products[(o.pk + k) % 100], quantity=1 + k, unit_price=Decimal("9.90"))
        for o in orders
        for k in range(2)
    )
    for _ in range(1000 // scale):
        Product.objects.update(stock=F("stock") + 1)
    execute("VACUUM ANALYZE")
    return {"seconds": time.perf_counter() - began, "events": event_counts()}


def event_counts() -> dict[str, int]:
    from audit_stream import registry

    return {
        table: execute(f'SELECT count(*) FROM "{table}"')[0][0] for table in sorted(registry.event_models)
    }


def the_request(scale: int, round_: int):
    """The bad import: creates, updates and deletes over customers, orders and lines; its context id."""
    from decimal import Decimal

    from django.db import transaction

    import audit_stream
    from demo.shop.models import Customer, Order, OrderLine, Product

    products = list(Product.objects.order_by("pk")[:100])
    n = 1000 // scale
    with transaction.atomic(), audit_stream.context(benchmark="undo", round=round_) as ctx:
        new_customers = Customer.objects.bulk_create(
            Customer(name=f"imported {round_}-{i}", email=f"i{round_}-{i}@example.com") for i in range(n)
        )
        new_orders = Order.objects.bulk_create(Order(customer=c, status="pending") for c in new_customers)
        OrderLine.objects.bulk_create(
            OrderLine(order=o, product=products[(o.pk + k) % 100], quantity=1, unit_price=Decimal("1.00"))
            for o in new_orders
            for k in range(2)
        )
        old_orders = list(Order.objects.filter(status="pending").exclude(pk__in=[o.pk for o in new_orders])
                          .order_by("pk").values_list("pk", flat=True)[: 3 * n])  # fmt: skip
        Order.objects.filter(pk__in=old_orders[n:]).update(status="paid")
        old_customers = Customer.objects.exclude(pk__in=[c.pk for c in new_customers]).order_by("pk")[:n]
        Customer.objects.filter(pk__in=list(old_customers.values_list("pk", flat=True))).update(
            name="renamed"
        )
        Order.objects.filter(pk__in=old_orders[:n]).delete()  # the lines go with them
    return ctx.id


# Every row of a table, hashed: equal before the request and after its undo.
_FINGERPRINT_SQL = "SELECT md5(coalesce(string_agg(t::text, ',' ORDER BY t.id), '')) FROM {table} AS t"


def fingerprint() -> dict[str, str]:
    return {t: execute(_FINGERPRINT_SQL.format(table=f'"{t}"'))[0][0] for t in TABLES}


class Counter:
    """Counts SQL statements (an execute wrapper)."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, execute, sql, params, many, context):
        self.count += 1
        return execute(sql, params, many, context)


def measure(scale: int) -> dict:
    from django.db import connection

    from audit_stream.history.undo import undo

    rows = []
    before = fingerprint()
    for round_ in range(REPEAT):
        ctx = the_request(scale, round_)
        changes = sum(
            execute(f'SELECT count(*) FROM "{t}" WHERE pgh_context_id = %s', [ctx])[0][0]
            for t in ("shop_customerevent", "shop_orderevent", "shop_orderlineevent")
        )
        dry, real = Counter(), Counter()
        with connection.execute_wrapper(dry):
            began = time.perf_counter()
            plan = undo(ctx, dry_run=True)
            dry_s = time.perf_counter() - began
        with connection.execute_wrapper(real):
            began = time.perf_counter()
            done = undo(ctx)
            undo_s = time.perf_counter() - began
        if fingerprint() != before:
            raise SystemExit("the undo did not bring the tables back to their state before the request")
        rows.append({"changes": changes, "objects": len(plan.steps), "counts": done.counts(),
                     "dry_run_s": dry_s, "undo_s": undo_s, "dry_run_queries": dry.count,
                     "undo_queries": real.count})  # fmt: skip
        log(f"  1/{scale}: {changes} changes, {len(plan.steps)} objects: dry run {dry_s:.2f} s"
            f" ({dry.count} queries), undo {undo_s:.2f} s ({real.count} queries)")  # fmt: skip
    return {
        "scale": scale,
        "rounds": rows,
        "changes": rows[0]["changes"],
        "objects": rows[0]["objects"],
        "dry_run_s": statistics.median(r["dry_run_s"] for r in rows),
        "undo_s": statistics.median(r["undo_s"] for r in rows),
        "dry_run_queries": sorted({r["dry_run_queries"] for r in rows}),
        "undo_queries": sorted({r["undo_queries"] for r in rows}),
    }


def machine() -> dict:
    import django

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True, cwd=ROOT)
    return {
        "cores": os.cpu_count(),
        "postgres": execute("SHOW server_version")[0][0],
        "python": platform.python_version(),
        "django": django.get_version(),
        "sources": commit.stdout.strip() + ("-dirty" if dirty.stdout.strip() else ""),
    }


def report(result: dict) -> str:
    m, full, small = result["machine"], result["full"], result["small"]
    verdict = "met" if full["undo_s"] < TARGET_S else "NOT met"
    lines = [
        SECTION,
        "",
        f"Measured {result['when']} with `{COMMAND}` on the demo shop's models (`demo.settings`).",
        "The machine was shared with other runs (numbers are noisy).",
        "",
        f"Machine: {m['cores']} cores; PostgreSQL {m['postgres']}; Python {m['python']},"
        f" Django {m['django']}; sources {m['sources']}.",
        "",
        f"Set-up: 3,000 customers with one order of two lines each, 100 products, and 100,000 product"
        f" events from 1,000 updates of every product (history the undo looks through and leaves alone),"
        f" in {result['setup']['seconds']:.0f} s.",
        "",
        "The request (one context, one transaction): 1,000 customers created with an order of two lines"
        " each, 2,000 orders and 1,000 customers updated, 1,000 orders deleted with their 2,000 lines"
        " (Django's cascade). Each undo is checked: the three tables are back to their rows before the"
        " request (md5 of every row).",
        "",
        "| size | changes | objects | dry run s | undo s | statements (dry run) | statements (undo) |",
        "|---|--:|--:|--:|--:|--:|--:|",
    ]
    for row, name in ((full, "full"), (small, "a tenth")):
        lines.append(
            f"| {name} | {row['changes']:,} | {row['objects']:,} | {row['dry_run_s']:.2f}"
            f" | {row['undo_s']:.2f} | {', '.join(map(str, row['dry_run_queries']))}"
            f" | {', '.join(map(str, row['undo_queries']))} |"
        )
    lines += [
        "",
        f"Medians of {REPEAT} rounds (the request is made again before each undo). Target: undo of 10,000"
        f" changes under {TARGET_S:.0f} s: {verdict} ({full['undo_s']:.2f} s). The number of statements is"
        " the same at both sizes: each model is planned and written set-wise (one plan query, one lock, and"
        " at most one INSERT, UPDATE and DELETE per model), never a query per object.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    configure(args)
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command

    settings.DEBUG = False  # the demo's DEBUG would keep every query in memory
    recreate_database()
    call_command("migrate", verbosity=0, interactive=False)
    scale = 10 if args.quick else 1
    log("set-up")
    setup = set_up(scale)
    log("full size" if scale == 1 else "quick")
    full = measure(scale)
    log("a tenth")
    small = measure(scale * 10)
    result = {
        "when": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "setup": setup,
        "full": full,
        "small": small,
    }
    text = report(result)
    print(text)
    if not args.quick and not args.no_report:
        replace_section(SECTION, text)
        out = ROOT / "benchmarks" / "results" / f"undo-{dt.date.today():%Y-%m-%d}.json"
        out.write_text(json.dumps(result, indent=2, default=str) + "\n")
        log(f"wrote BENCHMARKS.md and {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
