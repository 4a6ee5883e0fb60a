# Per-object counts of changes and folded events (retention's keep_last reads them instead of
# grouping whole tables): the table, the statement-level triggers on the change feed that keep
# it, and the counts of the history already there; an index of the changes without an object.

from django.db import migrations, models

from audit_stream.retention import counts


def _install(apps, schema_editor):
    schema_editor.execute(counts.install_sql())
    counts.backfill(schema_editor.connection)


def _uninstall(apps, schema_editor):
    schema_editor.execute(counts.uninstall_sql())


class Migration(migrations.Migration):
    dependencies = [
        ("audit_stream", "0030_ddl_log_wakeup"),
    ]

    operations = [
        migrations.CreateModel(
            name="ObjectCount",
            fields=[
                (
                    "pk",
                    models.CompositePrimaryKey(
                        "event_table",
                        "object_id",
                        blank=True,
                        editable=False,
                        primary_key=True,
                        serialize=False,
                    ),
                ),
                ("event_table", models.TextField()),
                ("object_id", models.TextField()),
                ("changes", models.BigIntegerField(default=0)),
                ("events", models.BigIntegerField(default=0)),
            ],
            options={
                "db_table": "audit_stream_object_count",
                "indexes": [
                    models.Index(
                        condition=models.Q(("changes__gt", 1)),
                        fields=["changes"],
                        name="audit_stream_count_changes",
                    ),
                    models.Index(
                        condition=models.Q(("events__gt", 1)),
                        fields=["event_table", "events"],
                        name="audit_stream_count_events",
                    ),
                ],
            },
        ),
        migrations.AddIndex(
            model_name="change",
            index=models.Index(
                condition=models.Q(("object_id__isnull", True)),
                fields=["event_table", "model", "event_id"],
                name="audit_stream_change_objectless",
            ),
        ),
        migrations.RunPython(_install, _uninstall),
    ]
