# The dashboard's change feed filtered by a user reads each of the user's contexts'
# newest changes in order (audit_stream.dashboard.feed): an index on (context, id)
# replaces the one on (context), which it serves as well.
#
# On a partitioned change feed (audit_stream.partitions) the index is created on
# the parent, which creates it on every partition; partitions created later get it
# with the others (CREATE TABLE ... PARTITION OF). Building it locks the feed
# against writes (the fold waits) for the time it takes, which grows with the feed.

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("audit_stream", "0030_ddl_log_wakeup"),
    ]

    operations = [
        migrations.AddIndex(
            model_name="change",
            index=models.Index(fields=["context", "id"], name="audit_stream_change_context_id"),
        ),
        migrations.RemoveIndex(model_name="change", name="audit_stream_change_context"),
    ]
