"""The variants measured side by side: one table each, same columns, different tracking."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

from django.apps import apps

UNTRACKED = "untracked"
AUDIT_STREAM = "audit_stream"
PGHISTORY = "pghistory"

#: The metadata every tracked variant's context carries.
CONTEXT_METADATA = {"user": "bench"}


@dataclass(frozen=True)
class Variant:
    """One way of tracking the same model.

    Attributes:
        key: A short name for tables and JSON.
        model_name: The benchapp model (its event model is ``<model_name>Event``).
        family: ``UNTRACKED``, ``AUDIT_STREAM`` or ``PGHISTORY``.
        description: What is installed, for the report.
        settings: ``AUDIT_STREAM`` overrides in effect for the variant's runs.
        logged: Logged schema-wide by ``initlogging`` (events go to the shared row log).
    """

    key: str
    model_name: str
    family: str
    description: str
    settings: dict = field(default_factory=dict)
    logged: bool = False

    @property
    def model(self):
        """The tracked (or untracked) model."""
        return apps.get_model("benchapp", self.model_name)

    @property
    def event_model(self):
        """The event model, or ``None`` for the untracked variant."""
        if self.family == UNTRACKED:
            return None
        if self.logged:
            from audit_stream.models import RowLog

            return RowLog
        return apps.get_model("benchapp", f"{self.model_name}Event")

    @property
    def tables(self) -> list[str]:
        """The tables a run writes to (the item table and its event table or the row log)."""
        models = [self.model, self.event_model]
        return [m._meta.db_table for m in models if m is not None]

    @property
    def context_table(self) -> str | None:
        """The table the library stores contexts in."""
        return {AUDIT_STREAM: "audit_stream_context", PGHISTORY: "pghistory_context"}.get(self.family)

    def context(self) -> contextlib.AbstractContextManager:
        """The library's context manager with :data:`CONTEXT_METADATA` (nothing when untracked)."""
        if self.family == AUDIT_STREAM:
            import audit_stream

            return audit_stream.context(**CONTEXT_METADATA)
        if self.family == PGHISTORY:
            import pghistory

            return pghistory.context(**CONTEXT_METADATA)
        return contextlib.nullcontext()


VARIANTS: list[Variant] = [
    Variant(UNTRACKED, "PlainItem", UNTRACKED, "no triggers"),
    Variant(
        "audit_stream",
        "AsItem",
        AUDIT_STREAM,
        "`@audit_stream.track()`: Snapshot() + BeforeDelete(), statement-level AFTER triggers",
    ),
    Variant(
        "audit_stream notify-off",
        "AsNoNotifyItem",
        AUDIT_STREAM,
        '`track(Snapshot(), BeforeDelete())` with `AUDIT_STREAM = {"NOTIFY": False}`',
        settings={"NOTIFY": False},
    ),
    Variant(
        "audit_stream invoker",
        "AsInvokerItem",
        AUDIT_STREAM,
        "`@audit_stream.track()` with `SECURITY DEFINER` and the pinned `search_path` taken off its"
        " trigger functions and the context attach they call (after migrate): the cost of the"
        " security model, by difference with `audit_stream`",
    ),
    Variant(
        "audit_stream partitioned",
        "AsPartItem",
        AUDIT_STREAM,
        "`@audit_stream.track()` into an event table partitioned by `pgh_id` (`PARTITIONS`, ranges of"
        " 100,000 ids, converted by migrate): each event row routed to its partition",
    ),
    Variant(
        "audit_stream initlogging",
        "LogItem",
        AUDIT_STREAM,
        "no `@track`: the table is logged schema-wide by `manage.py initlogging` into the shared"
        " row log (statement-level AFTER triggers, JSONB rows, only the changed columns of an update)",
        logged=True,
    ),
    Variant(
        "pghistory row",
        "PhRowItem",
        PGHISTORY,
        "`pghistory.track(InsertEvent(), UpdateEvent(), DeleteEvent())`: row-level triggers (default)",
    ),
    Variant(
        "pghistory statement",
        "PhStmtItem",
        PGHISTORY,
        "the same trackers with `level=pghistory.Statement`",
    ),
]


def by_key(keys: list[str] | None) -> list[Variant]:
    """The variants named by ``keys`` (all when ``None``); the untracked baseline is always included."""
    if not keys:
        return list(VARIANTS)
    unknown = set(keys) - {v.key for v in VARIANTS}
    if unknown:
        raise SystemExit(f"unknown variant(s): {', '.join(sorted(unknown))}")
    return [v for v in VARIANTS if v.key == UNTRACKED or v.key in keys]
