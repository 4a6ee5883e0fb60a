# A schema-only transaction wakes the worker and is seen by the idle check: the DDL log
# gets the pgh_xid index the other logs have, and its functions the wake-up.

from django.db import migrations, models

from audit_stream import rowlog


def _refresh_ddl_functions(apps, schema_editor):
    rowlog.refresh_ddl_functions(schema_editor.connection.alias)


class Migration(migrations.Migration):
    dependencies = [
        ("audit_stream", "0029_partition_function"),
    ]

    operations = [
        migrations.AddIndex(
            model_name="ddllog",
            index=models.Index(fields=["pgh_xid"], name="audit_stream_ddl_log_xid"),
        ),
        migrations.RunPython(_refresh_ddl_functions, migrations.RunPython.noop),
    ]
