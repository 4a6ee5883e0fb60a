# The partition function (audit_stream.partitions.ensure_function): the beat schedule,
# running as a runtime role that owns nothing, keeps partitions ahead through it.
# (Layouts of tables already partitioned are recorded by post_migrate's partitions.sync.)

from django.db import migrations

from audit_stream import partitions


class Migration(migrations.Migration):
    dependencies = [
        ("audit_stream", "0026_i24_scale_more"),
    ]

    operations = [
        migrations.RunSQL(partitions.ensure_function(), partitions.DROP_ENSURE_FUNCTION),
    ]
