"""``manage.py backfill_history app.Model ...``: record rows that predate their tracking."""

from __future__ import annotations

import time

from django.apps import apps
from django.core.management.base import BaseCommand, CommandError
from django.db import DEFAULT_DB_ALIAS
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from audit_stream.history import backfill


class Command(BaseCommand):
    help = (
        "Write one 'backfill' event (in the context {'command': 'backfill_history'}) for every row"
        " of the given models that has no history yet, so that as_of and revert work for rows older"
        " than their tracking. Models tracked with @track or tables logged by initlogging."
        " Idempotent and resumable; safe while the application writes."
    )

    def add_arguments(self, parser):
        parser.add_argument("models", nargs="+", metavar="app_label.Model", help="The models to backfill.")
        parser.add_argument(
            "--batch-size", type=int, default=10_000, help="Rows per transaction (default: 10000)."
        )
        parser.add_argument(
            "--dry-run", action="store_true", help="Say how many rows need it; write nothing."
        )
        parser.add_argument(
            "--database", default=DEFAULT_DB_ALIAS, help="The database alias (default: default)."
        )

    def handle(self, *args, **options):
        if options["batch_size"] < 1:
            raise CommandError("--batch-size must be at least 1.")
        using = options["database"]
        models = []
        for label in options["models"]:
            try:
                models.append(apps.get_model(label))
            except (LookupError, ValueError):
                raise CommandError(
                    f"Unknown model {label!r}: use app_label.ModelName, e.g. shop.Product."
                ) from None
        plans = []
        for model in models:
            try:
                plans.append(backfill.plan(model, using=using))
            except ValueError as exc:
                raise CommandError(str(exc)) from None
        console = Console(file=self.stdout, highlight=False, soft_wrap=True)
        for plan in plans:
            label = plan.model._meta.label
            if options["dry_run"]:
                console.print(
                    f"{label}: {plan.missing} of {plan.rows} rows have no history and would get a"
                    f" backfill event in {plan.target} (dry run: nothing written)."
                )
                continue
            started = time.monotonic()
            with Progress(
                TextColumn(f"{label}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("rows · {task.fields[rate]} rows/s · ETA"),
                TimeRemainingColumn(),
                console=console,
                transient=False,
            ) as bar:
                task = bar.add_task(label, total=plan.rows, rate="-")

                def advance(scanned, _written, task=task, bar=bar, started=started):
                    done = bar.tasks[0].completed + scanned
                    rate = done / max(time.monotonic() - started, 1e-6)
                    bar.update(task, advance=scanned, rate=f"{rate:,.0f}")

                written = backfill.backfill(
                    plan.model, batch_size=options["batch_size"], using=using, progress=advance
                )
            elapsed = time.monotonic() - started
            console.print(
                f"{label}: {written} backfill events written in {plan.target} and its many-to-many"
                f" fields ({plan.rows - plan.missing} of {plan.rows} rows already had history)"
                f" in {elapsed:.1f} s."
            )
