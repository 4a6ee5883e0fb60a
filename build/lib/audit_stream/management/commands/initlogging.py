"""``manage.py initlogging``: log every table of a schema, without model changes (as django-pgMemento)."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError
from django.db import DEFAULT_DB_ALIAS
from rich.console import Console
from rich.table import Table

from audit_stream import rowlog


class Command(BaseCommand):
    help = (
        "Start logging every table of a schema into audit_stream's row log, except ignored tables"
        " (AUDIT_STREAM['IGNORE_TABLES'] or PG_MEMENTO_IGNORE_TABLES), audit_stream's own tables,"
        " django_migrations and tables tracked with @track. Safe to run again: it picks up new tables."
    )

    def add_arguments(self, parser):
        parser.add_argument("--schema", default="public", help="The schema to log (default: public).")
        parser.add_argument(
            "--table",
            action="append",
            dest="tables",
            metavar="TABLE",
            help="Only this table of the schema (repeatable); the ignore rules still apply.",
        )
        parser.add_argument(
            "--dry-run", action="store_true", help="Say what would be logged; change nothing."
        )
        parser.add_argument(
            "--database", default=DEFAULT_DB_ALIAS, help="The database alias (default: default)."
        )

    def handle(self, *args, **options):
        console = Console(file=self.stdout, highlight=False, soft_wrap=True)
        try:
            statuses, ddl = rowlog.init_logging(
                options["schema"],
                tables=options["tables"],
                dry_run=options["dry_run"],
                using=options["database"],
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        table = Table("table", "status", title="dry run: nothing changed" if options["dry_run"] else None)
        for status in statuses:
            style = (
                "green"
                if status.action == "logging"
                else "yellow"
                if status.action.startswith("skipped")
                else None
            )
            table.add_row(status.table, status.action, style=style)
        console.print(table)
        logged = sum(s.logged for s in statuses)
        verb = "would be logged" if options["dry_run"] else "logged"
        console.print(f"{logged} of {len(statuses)} tables in schema {options['schema']!r} {verb}.")
        if not ddl:
            self.stderr.write(
                self.style.WARNING(
                    "Schema changes (ALTER/RENAME/DROP) are not recorded: the DDL event trigger needs a"
                    " superuser. Run initlogging once as a superuser to install it. New columns are"
                    " logged either way."
                )
            )
