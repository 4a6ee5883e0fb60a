# The dashboard's change feed filtered by a user reads each of the user's contexts'
# newest changes in order (audit_stream.dashboard.feed): an index on (context, id)
# replaces the two on (context) alone (the one declared, and the foreign key's own),
# which it serves as well. With an index on (context) alone the planner sorted a
# context's changes, all of them, to read its newest.
#
# On a partitioned change feed (audit_stream.partitions) the index is created on
# the parent, which creates it on every partition; partitions created later get it
# with the others (CREATE TABLE ... PARTITION OF). Building it locks the feed
# against writes (the fold waits) for the time it takes, which grows with the feed.

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("audit_stream", "0035_object_counts"),
    ]

    operations = [
        migrations.AddIndex(
            model_name="change",
            index=models.Index(fields=["context", "id"], name="audit_stream_change_context_id"),
        ),
        migrations.RemoveIndex(model_name="change", name="audit_stream_change_context"),
        migrations.AlterField(
            model_name="change",
            name="context",
            field=models.ForeignKey(
                db_constraint=False,
                db_index=False,
                null=True,
                on_delete=django.db.models.deletion.DO_NOTHING,
                related_name="+",
                to="audit_stream.context",
            ),
        ),
    ]
