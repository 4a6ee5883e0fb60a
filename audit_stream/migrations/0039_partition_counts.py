# Per-partition counts of folded events (retention drops a partition without reading it):
# the table, the statement-level trigger on the change feed that keeps it, and every
# partition there is now marked as not counted (its events folded before the counts
# existed: a drop reads it, as before). Nothing is read: this migration is quick. The
# partition function is installed again: it starts each new partition's counts.

from django.db import migrations, models

from audit_stream import partitions
from audit_stream.partitions import counts as partition_counts


def _mark_all_unknown(apps, schema_editor):
    with schema_editor.connection.cursor() as cursor:
        partition_counts.mark_all_unknown(cursor)


class Migration(migrations.Migration):
    dependencies = [
        ("audit_stream", "0038_context_counts"),
    ]

    operations = [
        migrations.CreateModel(
            name="PartitionCount",
            fields=[
                (
                    "pk",
                    models.CompositePrimaryKey(
                        "partition", "filenode", "slot", "context_id",
                        blank=True, editable=False, primary_key=True, serialize=False,
                    ),
                ),
                ("partition", models.TextField()),
                ("filenode", models.BigIntegerField()),
                ("slot", models.SmallIntegerField()),
                ("context_id", models.UUIDField()),
                ("events", models.BigIntegerField(default=0)),
            ],
            options={
                "db_table": "audit_stream_partition_count",
            },
        ),
        migrations.RunSQL(partition_counts.install_sql(), partition_counts.uninstall_sql()),
        migrations.RunPython(_mark_all_unknown, migrations.RunPython.noop),
        # The partition function, which now starts each new partition's counts (and, from 0029
        # on, leaves them alone while the table is missing: reversing this keeps it working).
        migrations.RunSQL(partitions.ensure_function(), migrations.RunSQL.noop),
    ]
