"""``manage.py undo``: put back everything one request (context) or one transaction changed."""

from __future__ import annotations

import time

from django.core.management.base import BaseCommand, CommandError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from audit_stream import masking
from audit_stream.history.undo import UndoError, UndoPlan, undo, undo_transaction


class Command(BaseCommand):
    help = (
        "Undo every change of a context (a request) or of a transaction: created objects are deleted,"
        " deleted ones restored, updated ones get their previous values, in one transaction that is"
        " itself recorded. Refused, with every reason, if an object changed since (see --force)."
    )

    def add_arguments(self, parser):
        parser.add_argument("context", nargs="?", help="The context id (a UUID, as the admin shows it).")
        parser.add_argument(
            "--transaction", metavar="XID", help="Undo this transaction (an event's pgh_xid) instead."
        )
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="Show what would be done, object by object; change nothing.",
        )
        parser.add_argument(
            "--force", action="store_true", help="Overwrite objects changed since (the undo records it)."
        )
        parser.add_argument(
            "--partial",
            action="store_true",
            help="For models whose history lacks fields or changes, put back what was recorded.",
        )
        parser.add_argument(
            "--show", type=int, default=50, metavar="N", help="Objects listed in the plan (default 50)."
        )
        parser.add_argument("--no-input", action="store_true", help="Do not ask for confirmation.")
        parser.add_argument("--database", default="default", help="The database alias (default: default).")

    def handle(self, *args, **options):
        if bool(options["context"]) == bool(options["transaction"]):
            raise CommandError("Give a context id, or --transaction XID (one of them).")
        console = Console(file=self.stdout, highlight=False, soft_wrap=True)
        kwargs = {"force": options["force"], "partial": options["partial"], "using": options["database"]}

        def run(**extra) -> UndoPlan:
            if options["transaction"]:
                return undo_transaction(options["transaction"], **kwargs, **extra)
            return undo(options["context"], **kwargs, **extra)

        try:
            plan = run(dry_run=True)
        except UndoError as exc:
            raise CommandError(str(exc)) from None
        self._show(console, plan, options["show"])
        if plan.blocked:
            raise CommandError(plan.message())
        counts = plan.counts()
        changing = counts["delete"] + counts["restore"] + counts["update"]
        if options["dry_run"] or not changing:
            console.print("Dry run: nothing was changed." if options["dry_run"] else "Nothing to undo.")
            return
        if not options["no_input"]:
            try:
                answer = input(f"Undo {changing} change(s) of {plan.describe_target()}? [y/N] ")
            except EOFError:
                raise CommandError("No answer (no input): pass --no-input to undo without asking.") from None
            if answer.strip().lower() not in ("y", "yes"):
                raise CommandError("Cancelled; nothing was changed.")

        started = time.monotonic()
        with Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            console=console, transient=True,
        ) as bar:  # fmt: skip
            task = bar.add_task("undo", total=None)

            def progress(done: int, total: int, what: str) -> None:
                bar.update(task, completed=done, total=total, description=what)

            try:
                done = run(progress=progress)
            except UndoError as exc:
                raise CommandError(str(exc)) from None
        counts = done.counts()
        console.print(
            f"Undone in {time.monotonic() - started:.1f} s: {counts['delete']} deleted,"
            f" {counts['restore']} restored, {counts['update']} updated"
            + (
                f", {counts['conflicts']} later change(s) overwritten"
                if done.force and counts["conflicts"]
                else ""
            )
            + "."
        )
        console.print(
            f"The undo is recorded in context {done.context_id}; to undo it: manage.py undo {done.context_id}"
        )

    def _show(self, console: Console, plan: UndoPlan, show: int) -> None:
        counts = plan.counts()
        console.print(
            f"Undo of {plan.describe_target()}: {counts['delete']} to delete, {counts['restore']} to restore,"
            f" {counts['update']} to update, {counts['nothing']} unchanged;"
            f" {counts['conflicts']} conflict(s), {counts['refused']} refused."
        )
        steps = [s for s in plan.steps if s.action != "nothing"]
        if not steps or show <= 0:
            return
        table = Table("object", "undo", "fields (now -> after)", "conflicts")
        for step in steps[:show]:
            changes = masking.mask_changes(step.changes[:6], masking.label_columns(step.model))
            fields = ", ".join(f"{c}: {now!s} -> {then!s}" for c, now, then in changes)
            if len(step.changes) > 6:
                fields += f", ... ({len(step.changes)} fields)"
            table.add_row(f"{step.model} {step.object_id}", step.action, fields, str(len(step.conflicts)))
        console.print(table)
        if len(steps) > show:
            console.print(f"... and {len(steps) - show} more (--show N lists more).")
