# Fold lanes (audit_stream.stream.lanes): a checkpoint row per lane of a table, keyed by (event_table, lane).
# Existing checkpoints become lane 0 of 1: nothing to fold again, nothing skipped.
# (Numbered 0021 as assigned; it follows 0028, the leaf of main when this branch was rebased.)

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ("audit_stream", "0020_sink_payload_exact"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[
                migrations.RunSQL(
                    "ALTER TABLE audit_stream_checkpoint"
                    " ADD COLUMN lane smallint NOT NULL DEFAULT 0,"
                    " ADD COLUMN lanes smallint NOT NULL DEFAULT 1,"
                    " DROP CONSTRAINT audit_stream_checkpoint_pkey,"
                    " ADD CONSTRAINT audit_stream_checkpoint_pkey PRIMARY KEY (event_table, lane)",
                    "DELETE FROM audit_stream_checkpoint WHERE lane <> 0;"
                    " ALTER TABLE audit_stream_checkpoint DROP CONSTRAINT audit_stream_checkpoint_pkey,"
                    " DROP COLUMN lane, DROP COLUMN lanes,"
                    " ADD CONSTRAINT audit_stream_checkpoint_pkey PRIMARY KEY (event_table)",
                ),
            ],
            state_operations=[
                migrations.AddField(
                    model_name='checkpoint',
                    name='lane',
                    field=models.SmallIntegerField(default=0, help_text='Which lane of the table (0 to lanes - 1).'),
                ),
                migrations.AddField(
                    model_name='checkpoint',
                    name='lanes',
                    field=models.SmallIntegerField(default=1, help_text='How many lanes the table is folded in.'),
                ),
                migrations.AlterField(
                    model_name='checkpoint',
                    name='event_table',
                    field=models.TextField(),
                ),
                migrations.AddField(
                    model_name='checkpoint',
                    name='pk',
                    field=models.CompositePrimaryKey('event_table', 'lane', blank=True, editable=False, primary_key=True, serialize=False),
                ),
            ],
        ),
    ]
