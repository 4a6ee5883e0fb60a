"""The webhook benchmark's messages: made, received and checked (benchmarks/webhooks.py).

Real messages for fresh endpoints (tracked rows inserted and folded in-process),
what the receiver recorded of them, and the checks of every run: delivery at
least once, and the signatures of the receiver's samples.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from benchmarks.perfapp.harness import EVENTS, ITEMS, count, execute, insert_items, vacuum

SETTINGS = {"WEBHOOK_ALLOWED_NETWORKS": ["127.0.0.0/8"]}
MESSAGES = "audit_stream_webhookmessage"
ATTEMPTS = "audit_stream_webhookattempt"
STREAM_TABLES = [
    ITEMS,
    EVENTS,
    "audit_stream_change",
    "audit_stream_checkpoint",
    "audit_stream_context",
    "audit_stream_foldrun",
    MESSAGES,
    ATTEMPTS,
    "audit_stream_webhookendpoint",
]


# --------------------------------------------------------------------------- receipts


class Receipts:
    """What the receiver recorded: one tuple per request, in arrival order."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def all(self) -> list[tuple[float, str, str, str, str, str]]:
        if not self.path.exists():
            return []
        rows = []
        for line in self.path.read_text().splitlines():
            arrival, path, webhook_id, event_table, object_id, event_id = line.split("\t")[:6]
            rows.append((float(arrival), path, webhook_id, event_table, object_id, event_id))
        return rows

    def count(self) -> int:
        if not self.path.exists():
            return 0
        with self.path.open("rb") as f:
            return sum(1 for _ in f)

    def since(self, offset: int) -> list[tuple[float, str, str, str, str, str]]:
        return self.all()[offset:]


def flush_redis(url: str) -> None:
    """Forget queued tasks and pending-task keys of earlier runs."""
    import redis

    redis.Redis.from_url(url).flushdb()


def reset(redis_url: str) -> None:
    """Empty every table the stream and the webhooks touch; only with no worker running."""
    execute(f"TRUNCATE {', '.join(STREAM_TABLES)} RESTART IDENTITY CASCADE")
    vacuum(*STREAM_TABLES)
    flush_redis(redis_url)


def make_messages(
    args: argparse.Namespace,
    port: int,
    endpoints: int,
    messages: int,
    ordered: bool = False,
    one_object: bool = False,
) -> list:
    """A fresh database with ``endpoints`` endpoints and ``messages`` real messages, split evenly.

    ``one_object``: every message is a change of one row (inserted, then updated again and again).
    """
    from audit_stream.stream.fold import fold_all
    from audit_stream.webhooks.models import WebhookEndpoint

    reset(args.redis_url)
    created = [
        WebhookEndpoint.objects.create(url=f"http://127.0.0.1:{port}/e{i}", ordered=ordered)
        for i in range(endpoints)
    ]
    rows = messages // endpoints
    if one_object:
        insert_items(1, 1)
        execute(
            f"DO $$ BEGIN FOR i IN 1..{rows - 1} LOOP UPDATE {ITEMS} SET stock = stock + 1; END LOOP; END $$"
        )
    else:
        insert_items(rows, 5_000)
    folded = sum(r.folded for r in fold_all(max_seconds=600))
    pending = count(MESSAGES, "status = 'pending'")
    if folded != rows or pending != messages:
        raise RuntimeError(f"set-up: {folded} folded, {pending} pending messages; expected {messages}")
    vacuum(MESSAGES, ATTEMPTS)
    return created


def out_of_order(receipts: list[tuple]) -> int:
    """Deliveries that arrived after a later change of their object (2xx answers, arrival order)."""
    last: dict[str, int] = {}
    late = 0
    for _, _, _, _, object_id, event_id in receipts:
        if int(event_id) < last.get(object_id, -1):
            late += 1
        last[object_id] = max(int(event_id), last.get(object_id, -1))
    return late


def verify_delivered(receipts: list[tuple], expected: int) -> dict:
    """At least once: every message's webhook-id arrived, nothing else did, every message is delivered."""
    from audit_stream.webhooks.models import WebhookMessage

    ids = {m.webhook_id for m in WebhookMessage.objects.only("id")}
    received = Counter(r[2] for r in receipts)
    statuses = dict(Counter(WebhookMessage.objects.values_list("status", flat=True)))
    attempts = count(ATTEMPTS)
    problems = []
    if len(ids) != expected:
        problems.append(f"{len(ids)} messages in the database, expected {expected}")
    if set(received) != ids:
        problems.append(
            f"{len(ids - set(received))} messages never received, {len(set(received) - ids)} unknown ids"
        )
    if statuses != {"delivered": expected}:
        problems.append(f"message statuses {statuses}")
    if problems:
        raise RuntimeError("delivery check failed: " + "; ".join(problems))
    return {
        "messages": expected,
        "received": len(receipts),
        "distinct": len(received),
        "duplicates": len(receipts) - len(received),
        "attempts": attempts,
    }


def verify_signatures(samples: Path, secrets: dict[str, str]) -> int:
    """Verify the receiver's full samples with ``standardwebhooks``; returns how many were verified."""
    from standardwebhooks.webhooks import Webhook

    verified = 0
    for line in samples.read_text().splitlines():
        sample = json.loads(line)
        payload = Webhook(secrets[sample["path"]]).verify(sample["body"], sample["headers"])
        if payload["data"]["model"] != "perfapp.item" or payload["data"]["event_table"] != EVENTS:
            raise RuntimeError(f"unexpected payload {payload}")
        verified += 1
    if not verified:
        raise RuntimeError("the receiver kept no sample to verify")
    return verified
