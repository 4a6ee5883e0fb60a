"""Retention: the one code path allowed to delete history.

Policies come from ``AUDIT_STREAM["RETENTION"]``::

    AUDIT_STREAM = {
        "RETENTION": {
            "default": {"max_age": "365d"},               # every event table
            "shop.OrderEvent": {"max_age": "90d", "keep_last": 10},
            "row_log": {"max_age": "90d"},                # initlogging's row log
            "changes": {"max_age": "180d", "keep_last": 1},
            "webhook_messages": {"max_age": "30d"},       # delivered and dead ones only
            "webhook_attempts": {"max_age": "30d"},
            "sink_messages": {"max_age": "30d"},          # delivered and dead ones only
        }
    }

``max_age`` (``"90d"``, ``"12h"``, ``"2w"``...) deletes what is older; with
``keep_last`` too, the last N rows of each object are kept whatever their age;
``keep_last`` alone keeps the last N per object; ``None`` (or no policy) keeps
forever. Defaults: events and changes are kept forever; delivered and dead
webhook messages, their attempts, and delivered and dead sink messages for 30
days. Contexts that nothing references any more are pruned once they are an
hour old.

Safety:

* An event is deleted only once the stream has folded it: its transaction is
  visible in the table's checkpoint snapshot. ``force=True`` overrides this.
  A checkpoint restored from another cluster says nothing about this one's
  transactions: until the fold has recovered it, the table's events are not
  pruned (the run reports why).
* An object's latest change is never pruned, whatever the policy: the fold
  takes the object's previous state from it. Changes without an object
  (schema changes) are one object per event table and model: the newest
  stays, by the batched delete as by a partition drop.
* Rows to delete are chosen by a read (no lock), then deleted by primary key
  in short transactions of ``batch_size`` rows, so a concurrent writer waits
  at most for one batch. ``keep_last`` ranks only the objects that may have
  more rows than it keeps, found in per-object counts the change feed keeps
  (:mod:`audit_stream.retention.counts`): a dry run reads those objects' rows,
  not the whole table, and counts exactly what the run deletes.
* A context is pruned once nothing refers to it: no change (the feed's
  ``context_id`` index), no folded event (per-context counts the change feed
  keeps, :mod:`audit_stream.retention.references`, which the event deletes
  take off) and no unfolded event (each table's ``pgh_xid`` range), and it is
  an hour old (rechecked under the row lock by the DELETE): no event table is
  read whole.
* A partitioned event table (:mod:`audit_stream.partitions`) under a
  ``max_age`` policy without ``keep_last`` loses whole partitions first: each
  one, lowest ids first, whose events were all created before the cutoff and
  are all folded (never one holding an unfolded event) is detached and
  dropped, milliseconds whatever its size and no WAL per row. The partition
  that straddles the cutoff is pruned in batches, as above.
* Event tables refuse DELETE (:class:`audit_stream.triggers.AppendOnly`);
  each batch lifts that for its own transaction only, with :func:`allow_prune`.
* Deleting history (events, the row log, contexts) is a privilege: the
  ``DELETE`` privilege on those tables, which the owner role has and the
  runtime role is never granted (``manage.py audit_stream_grants``). A role
  without it prunes the stream's tables, reports for each history table with
  a policy that it needs the owner role (or ``--pruner``), and leaves
  unreferenced contexts to a role that may delete them.

The package, one module per concern: :mod:`~audit_stream.retention.policies`
(the settings), :mod:`~audit_stream.retention.permission` (who may delete),
:mod:`~audit_stream.retention.batches` (choose, then delete in batches),
:mod:`~audit_stream.retention.counts` (per-object counts),
:mod:`~audit_stream.retention.references` (per-context counts),
:mod:`~audit_stream.retention.events`, :mod:`~audit_stream.retention.changes`,
:mod:`~audit_stream.retention.messages`, :mod:`~audit_stream.retention.contexts`,
:mod:`~audit_stream.retention.drops` (partitions dropped whole),
:mod:`~audit_stream.retention.foresight` (what a dry run's deletes would free) and
:mod:`~audit_stream.retention.erasure`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from django.db import DEFAULT_DB_ALIAS, connections
from django.utils import timezone

from audit_stream.retention import batches, changes, contexts, events, foresight, messages
from audit_stream.retention.batches import Progress
from audit_stream.retention.erasure import erase
from audit_stream.retention.permission import allow_prune, may_delete, privilege_error
from audit_stream.retention.policies import (
    ATTEMPTS,
    CHANGES,
    MESSAGES,
    ROW_LOG,
    SINK_MESSAGES,
    Policy,
    describe_policies,
    event_models,
    parse_duration,
    policies,
    row_log_model,
)

__all__ = [
    "ATTEMPTS",
    "CHANGES",
    "MESSAGES",
    "ROW_LOG",
    "SINK_MESSAGES",
    "Policy",
    "PruneReport",
    "allow_prune",
    "describe_policies",
    "erase",
    "may_delete",
    "parse_duration",
    "policies",
    "prune",
]


@dataclass
class PruneReport:
    """Rows deleted (or, in a dry run, that would be) per table, and how long it took."""

    rows: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    dry_run: bool = False

    @property
    def total(self) -> int:
        return sum(self.rows.values())


def prune(
    *,
    using: str = DEFAULT_DB_ALIAS,
    targets: list[str] | None = None,
    overrides: Policy | None = None,
    batch_size: int = 10_000,
    dry_run: bool = False,
    force: bool = False,
    progress: Progress | None = None,
) -> PruneReport:
    """Apply the retention policies.

    Args:
        targets: Restrict to these targets (event model labels, ``"row_log"``, ``"changes"``,
            ``"webhook_messages"``, ``"webhook_attempts"``, ``"sink_messages"``); all by default.
        overrides: A policy that replaces the configured one for every target.
        batch_size: Rows per delete transaction.
        dry_run: Count what would be deleted; delete nothing.
        force: Also delete events the stream has not folded yet.
        progress: Called as ``progress(table, done, total)`` while deleting.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be a positive number of rows.")
    configured = policies()
    chosen = targets or list(configured)
    unknown = [t for t in chosen if t not in configured]
    if unknown:
        raise ValueError(f"Unknown retention target(s) {unknown}; known: {', '.join(configured)}.")
    report = PruneReport(dry_run=dry_run)
    connection = connections[using]
    models = event_models()
    now = timezone.now()
    pruned_events = False
    history = [
        (models[t] if t in models else row_log_model())._meta.db_table
        for t in chosen
        if (t in models or t == ROW_LOG) and not (overrides or configured[t]).keeps_forever
    ]
    with connection.cursor() as cursor:
        batches.create_doomed(cursor)
        if dry_run:  # what the deletes would take off the contexts' references
            foresight.create(cursor)
        empty = batches.empty_tables(cursor, history)
    try:
        for target in chosen:
            policy = overrides or configured[target]
            if policy.keeps_forever:
                continue
            cutoff = now - policy.max_age if policy.max_age else None
            started = time.monotonic()
            try:
                if target in models or target == ROW_LOG:
                    model = models[target] if target in models else row_log_model()
                    if not dry_run and not may_delete(model._meta.db_table, using):
                        report.errors.append(f"{target}: {privilege_error(model._meta.db_table)}")
                        continue
                    if model._meta.db_table in empty:  # nothing to choose: no checkpoint or plan read
                        table, count = model._meta.db_table, 0
                    else:
                        table, count = events.prune_events(
                            connection, model, policy, cutoff, batch_size, dry_run, force, progress
                        )
                    pruned_events = pruned_events or count > 0
                elif target == CHANGES:
                    table, count = changes.prune_changes(
                        connection, policy, cutoff, batch_size, dry_run, progress
                    )
                elif target == ATTEMPTS:
                    table, count = messages.prune_attempts(connection, cutoff, batch_size, dry_run, progress)
                elif target == SINK_MESSAGES:
                    table, count = messages.prune_sink_messages(
                        connection, cutoff, batch_size, dry_run, progress
                    )
                else:
                    table, count = messages.prune_messages(connection, cutoff, batch_size, dry_run, progress)
            except Exception as exc:  # one table's failure is reported, the others still run
                report.errors.append(f"{target}: {exc}")
                continue
            report.rows[table] = report.rows.get(table, 0) + count
            report.seconds[table] = time.monotonic() - started
        # Unreferenced contexts are garbage, not a policy anyone asked for: a role
        # without the privilege (the runtime role's worker) leaves them to the owner.
        if (not targets or pruned_events) and (dry_run or may_delete("audit_stream_context", using)):
            started = time.monotonic()
            report.rows["audit_stream_context"] = contexts.prune_contexts(
                connection, now, batch_size, dry_run, foreseen=dry_run
            )
            report.seconds["audit_stream_context"] = time.monotonic() - started
    finally:
        with connection.cursor() as cursor:
            batches.drop_doomed(cursor)
            foresight.drop(cursor)
    return report
