"""Undo a request: put back everything one context, or one transaction, changed.

::

    from audit_stream.history.undo import undo, undo_transaction

    plan = undo(context_id, dry_run=True)   # what would be done, object by object
    plan = undo(context_id)                 # done, in one transaction, in a new context
    undo_transaction(xid)                   # the same for one transaction (pgh_xid)

Every object the target touched goes back to its state just before the
target's first change to it: objects it created are deleted, objects it
deleted are restored with their primary keys, objects it updated get their
previous values. It covers every tracked model (through an event model that
records every field, insert, update and delete) and every table logged by
``initlogging`` (through the row log).

It runs in one transaction, in dependency order (parents restored before
their children, children deleted before their parents), inside a new context
whose metadata names what was undone (``undo_of`` or
``undo_of_transactions``), so the undo is recorded, reaches the change feed
and can itself be undone.

Nothing is changed, and :class:`UndoError` lists every reason, when an object
changed after the target (a conflict; ``force=True`` overwrites it and the new
context says so with ``undo_forced`` and ``undo_overwrote``), when history does
not record enough to put an object back (``partial=True`` puts back what was
recorded), when a table's columns changed so that a state cannot be written
back, or when a restored value is now used by another row of a unique
constraint.

The number of statements depends on the number of models and tables touched,
never on the number of objects: every source is planned and written set-wise.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from django.db import DEFAULT_DB_ALIAS, DatabaseError, connections, transaction
from django.db import models as django_models

from audit_stream.context import new_context
from audit_stream.history import undo_catalog
from audit_stream.history.undo_sources import (
    DELETE,
    NOTHING,
    RESTORE,
    UPDATE,
    Conflict,
    Refusal,
    Step,
    Target,
)
from audit_stream.triggers import quote_name

__all__ = ["Conflict", "Refusal", "Step", "UndoError", "UndoPlan", "undo", "undo_transaction"]

#: Called after each unit of work: (done, total, what).
Progress = Callable[[int, int, str], None]

#: Lines of an UndoError's message before "... and N more" (the plan has them all).
MESSAGE_LINES = 50


@dataclass
class UndoPlan:
    """What an undo does (or, in a dry run, would do), object by object.

    ``steps`` is one :class:`Step` per object the target changed; ``refusals``
    the objects that cannot be put back, with the reason; ``context_id`` the
    undo's own context once it ran.
    """

    target: Target
    steps: list[Step] = field(default_factory=list)
    refusals: list[Refusal] = field(default_factory=list)
    force: bool = False
    partial: bool = False
    dry_run: bool = False
    context_id: uuid.UUID | None = None

    @property
    def conflicts(self) -> list[Conflict]:
        """Every later change, by others, to an object the undo would put back."""
        return [c for s in self.steps if s.action != NOTHING for c in s.conflicts]

    @property
    def blocked(self) -> bool:
        """Whether the undo cannot run as asked (refusals, or conflicts without ``force``)."""
        return bool(self.refusals or (self.conflicts and not self.force))

    def counts(self) -> dict[str, int]:
        """How many objects each action applies to, and the number of conflicts."""
        counts = dict.fromkeys((DELETE, RESTORE, UPDATE, NOTHING), 0)
        for step in self.steps:
            counts[step.action] += 1
        return {**counts, "conflicts": len(self.conflicts), "refused": len(self.refusals)}

    def actions_by_model(self) -> dict[str, set[str]]:
        """``{model: {actions}}`` of the steps that change something (for permission checks)."""
        needed: dict[str, set[str]] = defaultdict(set)
        for step in self.steps:
            if step.action != NOTHING:
                needed[step.model].add(step.action)
        return dict(needed)

    def describe_target(self) -> str:
        kind = "context" if self.target.kind == "context" else "transaction"
        return f"{kind}{'s' if len(self.target.ids) > 1 else ''} {', '.join(map(str, self.target.ids))}"

    def message(self) -> str:
        """Why the undo cannot run, one line per object, with what to do (as :class:`UndoError` says it)."""
        return _message(self)

    def problems(self) -> list[str]:
        """One line per refusal, then per conflict (unless forced)."""
        lines = [str(r) for r in self.refusals]
        if not self.force:
            lines += [str(c) for c in self.conflicts]
        return lines


class UndoError(Exception):
    """An undo that was refused or failed; nothing was changed. ``plan`` has every detail."""

    def __init__(self, message: str, plan: UndoPlan | None = None) -> None:
        super().__init__(message)
        self.plan = plan


def undo(
    contexts: Any,
    *,
    dry_run: bool = False,
    force: bool = False,
    partial: bool = False,
    using: str | None = None,
    progress: Progress | None = None,
) -> UndoPlan:
    """Undo every change of one or more contexts; return the plan (carried out unless ``dry_run``).

    Args:
        contexts: A :class:`~audit_stream.models.Context`, its id (UUID or
            string), a queryset of contexts, or a list of any of those.
        dry_run: Only say what would be done; change nothing.
        force: Overwrite objects changed after the context (conflicts); the
            undo's context records ``undo_forced`` and what it overwrote.
        partial: For models whose history does not record every field, put
            back what was recorded instead of refusing them.
        using: The database alias.
        progress: Called as ``progress(done, total, what)`` as the undo goes.

    Raises:
        UndoError: If an object cannot be put back, changed since (without
            ``force``), or the database refuses the result. Nothing is changed.
    """
    ids = _context_ids(contexts, using or DEFAULT_DB_ALIAS)
    return _run(
        Target("context", tuple(ids)),
        dry_run=dry_run,
        force=force,
        partial=partial,
        using=using,
        progress=progress,
    )


def undo_transaction(
    xids: int | str | Iterable[int | str],
    *,
    dry_run: bool = False,
    force: bool = False,
    partial: bool = False,
    using: str | None = None,
    progress: Progress | None = None,
) -> UndoPlan:
    """Undo every change of one transaction (or several): ``xids`` are ``pgh_xid`` values.

    The arguments and errors are those of :func:`undo`.
    """
    values = [xids] if isinstance(xids, int | str) else list(xids)
    try:
        parsed = tuple(sorted({int(x) for x in values}))
    except (TypeError, ValueError):
        raise UndoError(f"A transaction id is a whole number (an event's pgh_xid), not {values!r}.") from None
    if not parsed:
        raise UndoError("Name at least one transaction to undo.")
    return _run(
        Target("transaction", parsed),
        dry_run=dry_run,
        force=force,
        partial=partial,
        using=using,
        progress=progress,
    )


def _context_ids(contexts: Any, using: str) -> list[str]:
    from audit_stream.models import Context

    if isinstance(contexts, django_models.QuerySet):
        return [str(pk) for pk in contexts.values_list("pk", flat=True)] or _none()
    items = contexts if isinstance(contexts, list | tuple | set) else [contexts]
    ids = []
    for item in items:
        value = item.pk if isinstance(item, Context) else item
        try:
            ids.append(str(uuid.UUID(str(value))))
        except ValueError:
            raise UndoError(f"{value!r} is not a context id (a UUID, as shown in the admin).") from None
    if not ids:
        _none()
    known = {str(pk) for pk in Context.objects.using(using).filter(pk__in=ids).values_list("pk", flat=True)}
    missing = [i for i in ids if i not in known]
    if missing:
        raise UndoError(f"No context {', '.join(missing)}: check the id (Contexts in the admin).")
    return sorted(set(ids))


def _none() -> list[str]:
    raise UndoError("Name at least one context to undo.")


# --- running --------------------------------------------------------------------------------------


def _run(
    target: Target, *, dry_run: bool, force: bool, partial: bool, using: str | None, progress: Progress | None
) -> UndoPlan:
    using = using or DEFAULT_DB_ALIAS
    plan = UndoPlan(target, force=force, partial=partial, dry_run=dry_run)
    counter = _Counter(progress)
    try:
        with transaction.atomic(using=using), connections[using].cursor() as cursor:
            tables, logged, _ = undo_catalog.found(cursor, target)
            event_sources, refusals = undo_catalog.event_sources(tables, partial)
            row_sources, row_refusals = undo_catalog.row_log_sources(cursor, logged)
            plan.refusals = refusals + row_refusals
            ordered, deferrable = undo_catalog.order(cursor, [*event_sources, *row_sources])
            # Planning is one unit per source; writing, three (restore, update, delete).
            counter.total = len(ordered) * (1 if dry_run else 4)
            for source in ordered:
                if not dry_run:
                    source.lock(cursor, target)
                steps, refused = source.plan(cursor, target)
                plan.steps += steps
                plan.refusals += refused
                counter.step(f"planned {source.label}")
            plan.refusals += undo_catalog.collisions(cursor, ordered, plan.steps)
            if plan.blocked and not dry_run:
                raise UndoError(_message(plan), plan)
            if dry_run or plan.blocked or not any(s.action != NOTHING for s in plan.steps):
                return plan
            with new_context(**_metadata(plan)) as state:
                plan.context_id = state.id
                _write(cursor, plan, ordered, deferrable, counter.step)
    except DatabaseError as exc:
        raise UndoError(
            f"The database refused the undo of {plan.describe_target()}: {_db_message(exc)}."
            " Nothing was changed.",
            plan,
        ) from exc
    return plan


class _Counter:
    """Reports progress as ``(done, total, what)``."""

    def __init__(self, progress: Progress | None) -> None:
        self.progress = progress
        self.done = 0
        self.total = 0

    def step(self, what: str) -> None:
        self.done += 1
        if self.progress is not None:
            self.progress(self.done, self.total, what)


def _write(
    cursor,
    plan: UndoPlan,
    ordered: list,
    deferrable: list[tuple[str, bool]],
    step_done: Callable[[str], None],
) -> None:
    """The statements: deletes children first (freeing unique values), updates, restores parents first."""
    by_action: dict[tuple[Any, str], list[Step]] = defaultdict(list)
    for step in plan.steps:
        by_action[(step.source, step.action)].append(step)
    sequence = [
        *((s, DELETE) for s in reversed(ordered)),
        *((s, UPDATE) for s in ordered),
        *((s, RESTORE) for s in ordered),
    ]
    for source, action in sequence:
        steps = by_action.get((source, action))
        if steps:
            source.write(cursor, action, steps)
        step_done(f"{action} {source.label}")
    if deferrable:
        # Check the deferred foreign keys now, while the error can still name the
        # undo, then give each its usual timing back.
        names = ", ".join(quote_name(name) for name, _ in deferrable)
        cursor.execute(f"SET CONSTRAINTS {names} IMMEDIATE")
        later = [quote_name(name) for name, deferred in deferrable if deferred]
        if later:
            cursor.execute(f"SET CONSTRAINTS {', '.join(later)} DEFERRED")


def _metadata(plan: UndoPlan) -> dict[str, Any]:
    key = "undo_of" if plan.target.kind == "context" else "undo_of_transactions"
    metadata: dict[str, Any] = {key: list(plan.target.ids)}
    if plan.force and plan.conflicts:
        metadata["undo_forced"] = True
        metadata["undo_overwrote"] = sorted({c.event for c in plan.conflicts})
    if plan.partial:
        metadata["undo_partial"] = True
    return metadata


def _message(plan: UndoPlan) -> str:
    lines = plan.problems()
    shown = lines[:MESSAGE_LINES]
    more = (
        f"\n  ... and {len(lines) - len(shown)} more (UndoError.plan lists them all)"
        if len(lines) > len(shown)
        else ""
    )
    hint = []
    if plan.conflicts and not plan.force:
        hint.append("force=True (--force) overwrites the later changes")
    if any("partial=True" in r.reason for r in plan.refusals):
        hint.append("partial=True (--partial) puts back what was recorded")
    return (
        f"Cannot undo {plan.describe_target()}; nothing was changed:\n  "
        + "\n  ".join(shown)
        + more
        + (f"\n({'; '.join(hint)}.)" if hint else "")
    )


def _db_message(exc: DatabaseError) -> str:
    cause = exc.__cause__
    diag = getattr(cause, "diag", None)
    parts = [str(cause or exc).strip().splitlines()[0]]
    if diag is not None and diag.message_detail:
        parts.append(diag.message_detail)
    if diag is not None and diag.constraint_name:
        parts.append(f"constraint {diag.constraint_name}")
    return " ".join(parts)
