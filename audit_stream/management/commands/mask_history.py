"""``manage.py mask_history``: rewrite history folded before a field was masked (audit_stream.remasking)."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError
from rich.console import Console
from rich.table import Table

from audit_stream import remasking
from audit_stream.management.confirm import confirm
from audit_stream.management.progress import bars as progress_bars


class Command(BaseCommand):
    help = (
        "Mask, with the current mask settings (track(mask=...), AUDIT_STREAM['MASK'], MASK_KEY), the values"
        " of masked fields in changes folded before the field was masked, and in their webhook and sink"
        " messages not yet delivered. In short batches; running it again rewrites nothing."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--model", action="append", default=[], metavar="LABEL",
            help='Only the changes of this model ("app_label.Model") or logged table ("schema.table");'
            " repeatable. Default: every one with a masked field.",
        )  # fmt: skip
        parser.add_argument(
            "--dry-run", action="store_true", help="Count what would be rewritten; write nothing."
        )
        parser.add_argument(
            "--batch-size", type=int, default=1000, help="Rows read per transaction (default 1000)."
        )
        parser.add_argument("--no-input", action="store_true", help="Do not ask for confirmation.")

    def handle(self, *args, **options):
        console = Console(file=self.stdout, highlight=False, soft_wrap=True)
        if options["batch_size"] < 1:
            raise CommandError("--batch-size must be a positive number of rows.")
        labels = self._labels(options["model"])
        if not labels:
            self.stdout.write("No change in the feed has a masked field: nothing to rewrite.")
            return
        described = "; ".join(f"{label}: {', '.join(columns)}" for label, columns in sorted(labels.items()))
        if not options["dry_run"]:
            confirm(
                f"This rewrites the masked fields ({described}) of the changes folded so far and of their"
                " messages not yet delivered, with this process's mask settings; the clear values there"
                " are gone for good (the event tables keep them).",
                no_input=options["no_input"],
                cancelled="Nothing was rewritten.",
                does="rewrites history",
            )
        with progress_bars(console) as progress:
            report = remasking.remask(
                labels=labels,
                batch_size=options["batch_size"],
                dry_run=options["dry_run"],
                progress=progress,
            )
        self._summary(console, report, described)

    def _labels(self, names: list[str]) -> dict[str, list[str]]:
        masked = remasking.masked_labels()
        if not names:
            return masked
        chosen = {}
        for name in names:
            label = name.lower()
            if label not in masked:
                known = ", ".join(sorted(masked)) or "none"
                raise CommandError(
                    f"--model {name!r}: no change of it has a masked field (labels with one: {known})."
                    " Mask the field first (track(mask=...) or AUDIT_STREAM['MASK']), with the same"
                    " settings in every worker, then run this command."
                )
            chosen[label] = masked[label]
        return chosen

    def _summary(self, console, report: remasking.Report, described: str) -> None:
        verb = "would rewrite" if report.dry_run else "rewritten"
        table = Table(title=f"mask_history ({described})")
        table.add_column("table")
        table.add_column("rows read", justify="right")
        table.add_column(verb, justify="right")
        table.add_column("delivered with clear values", justify="right")
        for name in remasking.TABLES:
            delivered = "" if name == "changes" else f"{report.delivered.get(name, 0):,}"
            table.add_row(
                name, f"{report.read.get(name, 0):,}", f"{report.rewritten.get(name, 0):,}", delivered
            )
        console.print(table)
        gone = sum(report.delivered.values())
        if gone:
            self.stdout.write(
                self.style.WARNING(
                    f"{gone:,} delivered message(s) carried clear values of these fields: their receivers"
                    " have them, and this command cannot recall them (ask the receivers to delete them)."
                )
            )
        self.stdout.write(
            "The event tables and the row log keep the clear values (history: revert, undo and as_of need"
            " them). A worker still running older mask settings folds new changes in clear: give every"
            " worker these settings, then run this command again (it only rewrites what is still clear)."
        )
        if report.dry_run:
            self.stdout.write("Dry run: nothing was rewritten.")
        else:
            self.stdout.write(self.style.SUCCESS(f"{sum(report.rewritten.values()):,} row(s) rewritten."))
