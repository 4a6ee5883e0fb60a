# Per-context counts of folded events (retention's unreferenced contexts read them instead of
# every event table's context ids): the table, the statement-level trigger on the change feed
# that keeps it, and the counts of the history already there.
#
# The backfill reads every event table and the row log whole (a GROUP BY of their context
# ids), in the transaction that adds the trigger, so no change folded meanwhile is missed:
# on a big history it takes a while (seconds per million events) and the fold waits for it.

from django.db import migrations, models

from audit_stream.retention import references


def _install(apps, schema_editor):
    schema_editor.execute(references.install_sql())
    references.backfill(schema_editor.connection)


def _uninstall(apps, schema_editor):
    schema_editor.execute(references.uninstall_sql())


class Migration(migrations.Migration):
    dependencies = [
        ("audit_stream", "0037_change_context_id"),
    ]

    operations = [
        migrations.CreateModel(
            name="ContextCount",
            fields=[
                ("context_id", models.UUIDField(primary_key=True, serialize=False)),
                ("events", models.BigIntegerField(default=0)),
            ],
            options={
                "db_table": "audit_stream_context_count",
            },
        ),
        migrations.RunPython(_install, _uninstall),
    ]
