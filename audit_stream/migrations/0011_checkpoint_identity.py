# Checkpoint identity: follows table renames, knows its cluster, recovers from a restore.

import django.contrib.postgres.fields
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('audit_stream', '0010_context_marker'),
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
    ]
