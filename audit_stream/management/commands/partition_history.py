"""``manage.py partition_history``: partition the history tables PARTITIONS declares, ahead of time."""

from __future__ import annotations

from django.core.management.base import BaseCommand
from django.db import DEFAULT_DB_ALIAS

from audit_stream import partitions


class Command(BaseCommand):
    help = (
        "Convert every table the PARTITIONS setting declares into a table partitioned by pgh_id (the"
        " existing rows become its first partition: nothing is copied, writers wait for one validating"
        " read of the table), and create the partitions ahead. migrate runs the same."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--database", default=DEFAULT_DB_ALIAS, help="The database alias (default: default)."
        )

    def handle(self, *args, **options):
        using = options["database"]
        layouts = partitions.declared()
        if not layouts:
            self.stdout.write('Nothing declared: set AUDIT_STREAM["PARTITIONS"] first.')
            return
        for number, layout in enumerate(layouts.values(), start=1):
            prefix = f"[{number}/{len(layouts)}] "
            converted = partitions.convert(
                layout,
                using=using,
                progress=lambda message, prefix=prefix: self.stdout.write(prefix + message),
            )
            created = partitions.ensure(layout, using=using)
            state = "converted" if converted else "already partitioned"
            self.stdout.write(f"{prefix}{layout.table}: {state}, {len(created)} partition(s) created ahead")
