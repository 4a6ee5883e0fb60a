"""``flush`` for the test suite: truncate only the tables written (or analysed) since their last
truncation; what a ``transaction=True`` test runs after each test.

Django's own ``flush`` truncates every table of every app (63 here, each with its
indexes given new files), 0.2 s per test on an idle machine and over 1 s when the
machine is busy. A table whose heap (every partition's, for a partitioned one)
has no page at all, and no statistics from a VACUUM or ANALYZE since, is already
in the state a TRUNCATE leaves: no row, live or dead, since it was created or
last truncated. So this command truncates only the other tables, with CASCADE
for the empty tables that reference them, then sends ``post_migrate`` as Django's does (permissions and
content types come back). The database ends exactly as Django's flush leaves
it; interactive use and ``reset_sequences`` fall back to Django's command.
"""

from __future__ import annotations

import contextlib
from importlib import import_module

from django.apps import apps
from django.core.management.color import no_style
from django.core.management.commands import flush
from django.core.management.sql import emit_post_migrate_signal
from django.db import connections

# The tables, of those named, that a TRUNCATE would change: a heap (a partitioned
# table's: a partition's) with a page, or statistics from a VACUUM or ANALYZE
# (reltuples >= 0; TRUNCATE resets it to -1, "never analysed", as the planner sees it).
# %(tables)s: the quoted names of Django's tables, as regclass text.
_WRITTEN_SQL = """
SELECT t.name
FROM unnest(%(tables)s::text[]) AS t(name)
WHERE EXISTS (
    SELECT 1 FROM pg_class AS c
    WHERE c.oid = t.name::regclass
       -- pg_partition_tree lists a partitioned table and its partitions (nothing for a plain table).
       OR c.oid IN (SELECT p.relid FROM pg_partition_tree(t.name::regclass) AS p)
    HAVING bool_or(pg_relation_size(c.oid) > 0 OR c.reltuples >= 0)
)
"""


class Command(flush.Command):
    help = flush.Command.help + " In the test suite, only the tables that hold or held rows are truncated."

    def handle(self, **options):
        connection = connections[options["database"]]
        interactive, reset_sequences = options["interactive"], options.get("reset_sequences", True)
        if interactive or reset_sequences or connection.vendor != "postgresql":
            return super().handle(**options)
        for app_config in apps.get_app_configs():  # as Django's flush: register the apps' signal handlers
            with contextlib.suppress(ImportError):
                import_module(".management", app_config.name)
        tables = connection.introspection.django_table_names(only_existing=True, include_views=False)
        by_quoted = {connection.ops.quote_name(table): table for table in tables}
        with connection.cursor() as cursor:
            cursor.execute(_WRITTEN_SQL, {"tables": list(by_quoted)})
            written = [by_quoted[quoted] for (quoted,) in cursor.fetchall()]
        if written:
            sql = connection.ops.sql_flush(no_style(), written, reset_sequences=False, allow_cascade=True)
            connection.ops.execute_sql_flush(sql)
        if tables and not options.get("inhibit_post_migrate", False):
            emit_post_migrate_signal(options["verbosity"], False, options["database"])
