"""``--ordering``: ordered against unordered endpoints, over many objects and one (benchmarks/webhooks.py).

Each side is an in-process ``deliver()`` run (:func:`deliver_in_process`) of ``--messages`` messages.
"""

from __future__ import annotations

import argparse
import json
import os

from benchmarks.perfapp.harness import table
from benchmarks.webhooks_deliveries import deliver_in_process
from benchmarks.webhooks_messages import Receipts


def ordering_run(args: argparse.Namespace, port: int, receipts: Receipts) -> list[dict]:
    """Ordered against unordered, the messages spread over many objects or all one object's."""
    runs = []
    for one_object in (False, True):
        for ordered in (False, True):
            r = deliver_in_process(
                args, port, receipts, args.messages, ordered=ordered, one_object=one_object
            )
            r["load"] = os.getloadavg()[0]
            runs.append(r)
            print(json.dumps({k: r[k] for k in ("ordered", "one_object", "per_s", "cpu_us_per_message")}))
    return runs


def ordering_table(runs: list[dict]) -> str:
    rows = []
    for r in runs:
        statements = r["statements_per_message"]
        rows.append([
            "one object" if r["one_object"] else f"{r['messages']:,} objects",
            "ordered" if r["ordered"] else "unordered",
            f"{r['messages']:,}", f"{r['seconds']:.1f}", f"**{r['per_s']:,.0f}**",
            f"{r['cpu_us_per_message']:,.0f}", f"{r['claims']:,}",
            f"{statements.get('(transactions)', 0):.2f}", str(r["check"]["out_of_order"]), f"{r['load']:.1f}",
        ])  # fmt: skip
    headers = ["messages of", "endpoint", "messages", "seconds", "deliveries/s (wall)", "CPU µs/msg",
               "claims", "transactions/msg", "out of order", "load"]  # fmt: skip
    return table(headers, rows, right={2, 3, 4, 5, 6, 7, 8, 9})
