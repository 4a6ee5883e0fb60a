# Each webhook endpoint's claim floor (audit_stream.ordering): claims read from it, not from the
# index entries of every delivered message. And the unparking trigger of both message tables
# makes the message it unparks due from then (its first due time may lie below the floor).

import audit_stream.triggers
import pgtrigger.compiler
import pgtrigger.migrations
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('audit_stream', '0039_partition_counts'),
    ]

    operations = [
        pgtrigger.migrations.RemoveTrigger(
            model_name='sinkmessage',
            name='unpark_next',
        ),
        pgtrigger.migrations.RemoveTrigger(
            model_name='webhookmessage',
            name='unpark_next',
        ),
        migrations.AddField(
            model_name='webhookendpoint',
            name='due_floor',
            field=models.DateTimeField(blank=True, editable=False, null=True),
        ),
        pgtrigger.migrations.AddTrigger(
            model_name='sinkmessage',
            trigger=pgtrigger.compiler.Trigger(name='unpark_next', sql=audit_stream.triggers.TriggerSql(condition="WHEN (OLD.status IN ('pending', 'sending') AND NEW.status IN ('delivered', 'dead') AND NEW.object_key IS NOT NULL)", func='UPDATE "public"."audit_stream_sinkmessage" AS n\nSET held = false, next_attempt_at = greatest(n.next_attempt_at, clock_timestamp())\nWHERE n.id = (\n    SELECT q.id FROM "public"."audit_stream_sinkmessage" AS q\n    WHERE q.sink_id = NEW.sink_id\n      AND q.object_key IS NOT NULL AND q.object_key = NEW.object_key\n      AND q.status IN (\'pending\', \'sending\') AND q.change_id > NEW.change_id\n    ORDER BY q.change_id\n    LIMIT 1\n) AND n.status IN (\'pending\', \'sending\');\nRETURN NULL;', hash='5b513befb4c55276eea3945f01cc454ecb1ae7fa', operation='UPDATE', pgid='pgtrigger_unpark_next_7b635', table='audit_stream_sinkmessage', when='AFTER')),
        ),
        pgtrigger.migrations.AddTrigger(
            model_name='webhookmessage',
            trigger=pgtrigger.compiler.Trigger(name='unpark_next', sql=audit_stream.triggers.TriggerSql(condition="WHEN (OLD.status IN ('pending', 'sending') AND NEW.status IN ('delivered', 'dead') AND NEW.object_key IS NOT NULL)", func='UPDATE "public"."audit_stream_webhookmessage" AS n\nSET held = false, next_attempt_at = greatest(n.next_attempt_at, clock_timestamp())\nWHERE n.id = (\n    SELECT q.id FROM "public"."audit_stream_webhookmessage" AS q\n    WHERE q.endpoint_id = NEW.endpoint_id\n      AND q.object_key IS NOT NULL AND q.object_key = NEW.object_key\n      AND q.status IN (\'pending\', \'sending\') AND q.change_id > NEW.change_id\n    ORDER BY q.change_id\n    LIMIT 1\n) AND n.status IN (\'pending\', \'sending\');\nRETURN NULL;', hash='ed5376639b8ac6a829b5d612dcf0a33da5ffa63b', operation='UPDATE', pgid='pgtrigger_unpark_next_aef82', table='audit_stream_webhookmessage', when='AFTER')),
        ),
    ]
