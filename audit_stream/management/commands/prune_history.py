"""``manage.py prune_history``: apply the retention policies, or erase one object."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone
from rich.console import Console
from rich.table import Table

from audit_stream import retention
from audit_stream.management.confirm import confirm
from audit_stream.management.progress import bars as progress_bars
from audit_stream.models import RetentionRun


class Command(BaseCommand):
    help = (
        "Delete history older than the retention policies allow (AUDIT_STREAM['RETENTION']), in short"
        " batches, never an event the stream has not folded. --erase app.Model:pk removes every trace"
        " of one object."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="Show what would go, per table (with --erase: per table of that object); delete nothing.",
        )
        parser.add_argument(
            "--model", action="append", default=[], metavar="TARGET",
            help='Only this event model ("shop.OrderEvent"), or "changes", "webhook_messages",'
            ' "webhook_attempts", "sink_messages"; repeatable.',
        )  # fmt: skip
        parser.add_argument(
            "--max-age", help="Override the policy: delete what is older (e.g. 90d, 12h, 2w)."
        )
        parser.add_argument("--keep-last", type=int, help="Override the policy: keep the last N per object.")
        parser.add_argument(
            "--batch-size", type=int, default=10_000, help="Rows per transaction (default 10000)."
        )
        parser.add_argument(
            "--force",
            action="store_true",
            help="Also delete events the stream has not folded yet (dangerous).",
        )
        parser.add_argument("--erase", metavar="APP.MODEL:PK", help="Remove every trace of one object.")
        parser.add_argument("--no-input", action="store_true", help="Do not ask for confirmation.")

    def handle(self, *args, **options):
        console = Console(file=self.stdout, highlight=False, soft_wrap=True)
        if options["erase"]:
            return self._erase(options)
        if options["batch_size"] < 1:
            raise CommandError("--batch-size must be a positive number of rows.")
        overrides = self._overrides(options)
        try:
            known = retention.policies()
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        targets = self._targets(options["model"], known)
        if options["force"]:
            self.stderr.write(
                self.style.WARNING("--force: events the stream has not folded yet will be deleted too.")
            )

        run = RetentionRun.objects.create(trigger="command", dry_run=options["dry_run"])
        with progress_bars(console) as progress:
            report = retention.prune(
                targets=targets,
                overrides=overrides,
                batch_size=options["batch_size"],
                dry_run=options["dry_run"],
                force=options["force"],
                progress=progress,
            )
        run.rows, run.errors, run.finished_at = report.rows, report.errors, timezone.now()
        run.save(update_fields=["rows", "errors", "finished_at"])
        self._summary(console, report)
        if report.errors:
            raise CommandError("Pruning failed for: " + "; ".join(report.errors))

    def _overrides(self, options) -> retention.Policy | None:
        if options["max_age"] is None and options["keep_last"] is None:
            return None
        if options["keep_last"] is not None and options["keep_last"] < 1:
            raise CommandError("--keep-last must be a positive integer.")
        try:
            max_age = retention.parse_duration(options["max_age"]) if options["max_age"] else None
        except ValueError as exc:
            raise CommandError(f"--max-age: {exc}") from None
        return retention.Policy(max_age=max_age, keep_last=options["keep_last"])

    def _targets(self, names: list[str], known: dict) -> list[str] | None:
        if not names:
            return None
        lower = {k.lower(): k for k in known}
        chosen = []
        for name in names:
            if name.lower() not in lower:
                raise CommandError(
                    f"--model {name!r} is not a retention target. Choose among: {', '.join(known)}."
                )
            chosen.append(lower[name.lower()])
        return chosen

    def _summary(self, console, report: retention.PruneReport) -> None:
        verb = "would delete" if report.dry_run else "deleted"
        table = Table(title=f"prune_history: rows {verb}")
        table.add_column("table")
        table.add_column("rows", justify="right")
        table.add_column("rows/s", justify="right")
        table.add_column("time", justify="right")
        for name, rows in sorted(report.rows.items()):
            seconds = report.seconds.get(name, 0.0)
            rate = f"{rows / seconds:,.0f}" if seconds > 0 and rows and not report.dry_run else "-"
            table.add_row(name, f"{rows:,}", rate, f"{seconds:.2f}s")
        table.add_row("total", f"{report.total:,}", "", f"{sum(report.seconds.values()):.2f}s")
        console.print(table)

    def _erase(self, options) -> None:
        target = options["erase"]
        if ":" not in target:
            raise CommandError("--erase takes APP_LABEL.ModelName:PK, e.g. --erase shop.Customer:42.")
        label, pk = target.rsplit(":", 1)
        dry_run = options["dry_run"]
        if not dry_run:
            confirm(
                f"This removes every event, change and webhook message of {label} {pk}. It cannot be undone.",
                no_input=options["no_input"],
                cancelled="Erasure cancelled.",
            )
        try:
            counts = retention.erase(label, pk, dry_run=dry_run)
        except (ValueError, TypeError) as exc:
            raise CommandError(str(exc)) from None
        except Exception as exc:  # e.g. a pk of the wrong type
            raise CommandError(f"Could not erase {target}: {exc}") from None
        total = sum(counts.values())
        if dry_run:
            self.stdout.write(
                f"Dry run: erasing {label} {pk} would delete {total} row(s): {counts}. Nothing was deleted."
            )
            return
        self.stdout.write(
            self.style.SUCCESS(f"Erased {total} row(s) of {label} {pk}: {counts}. The erasure is recorded.")
        )
