# Checkpoint identity: follows table renames, knows its cluster, recovers from a restore.

import django.contrib.postgres.fields
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('audit_stream', '0010_security_definer'),
    ]

    operations = [
        migrations.AddField(
            model_name='checkpoint',
            name='cluster',
            field=models.TextField(help_text='System identifier of the cluster the snapshot is of.', null=True),
        ),
        migrations.AddField(
            model_name='checkpoint',
            name='floor',
            field=models.BigIntegerField(db_default=0, help_text='Events up to this pgh_id came from a restore and are folded.'),
        ),
        migrations.AddField(
            model_name='checkpoint',
            name='former_names',
            field=django.contrib.postgres.fields.ArrayField(base_field=models.TextField(), db_default=[], help_text="The table's earlier names.", size=None),
        ),
        migrations.AddField(
            model_name='checkpoint',
            name='high',
            field=models.BigIntegerField(help_text='Highest pgh_id committed when `target` was taken.', null=True),
        ),
        migrations.AddField(
            model_name='checkpoint',
            name='relid',
            field=models.BigIntegerField(help_text='pg_class oid of the table (follows renames).', null=True),
        ),
        # Existing checkpoints learn their table now, so a rename migrated after this one is followed.
        # (The cluster is recorded by the next fold, once it has checked the snapshot is this cluster's.)
        migrations.RunSQL(
            "UPDATE audit_stream_checkpoint SET relid = to_regclass(quote_ident(event_table))::oid"
            " WHERE relid IS NULL",
            migrations.RunSQL.noop,
        ),
    ]
