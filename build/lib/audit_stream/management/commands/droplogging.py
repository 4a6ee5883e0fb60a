"""``manage.py droplogging``: stop the schema-wide logging that ``initlogging`` started."""

from __future__ import annotations

from django.core.management.base import BaseCommand
from django.db import DEFAULT_DB_ALIAS

from audit_stream import rowlog


class Command(BaseCommand):
    help = (
        "Remove the row-log triggers from every table, the DDL event triggers and their functions."
        " The row log and the DDL log are kept: they are history (retention prunes them)."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--database", default=DEFAULT_DB_ALIAS, help="The database alias (default: default)."
        )

    def handle(self, *args, **options):
        tables = rowlog.drop_logging(using=options["database"])
        for table in tables:
            self.stdout.write(f"{table}: no longer logged")
        self.stdout.write(f"Stopped logging {len(tables)} table(s); the row log is kept.")
