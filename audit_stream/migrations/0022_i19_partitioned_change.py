# The partition function again (audit_stream.partitions.ensure_function): it now also gives
# each new partition the unique keys a partitioned table cannot hold (Layout.local_unique:
# the change feed's (event_table, event_id)), read from the layout the owner records.

from django.db import migrations

from audit_stream import partitions


class Migration(migrations.Migration):
    dependencies = [
        ("audit_stream", "0028_ddl_log_wakeup"),
    ]

    operations = [
        migrations.RunSQL(partitions.ensure_function(), migrations.RunSQL.noop),
    ]
