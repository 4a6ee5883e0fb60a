import uuid

import django.core.serializers.json
import django.db.models.functions.datetime
from django.db import migrations, models

from audit_stream import triggers


class Migration(migrations.Migration):
    initial = True

    dependencies = []

    operations = [
        migrations.CreateModel(
            name="Context",
            fields=[
                (
                    "id",
                    models.UUIDField(default=uuid.uuid4, editable=False, primary_key=True, serialize=False),
                ),
                ("created_at", models.DateTimeField(db_default=django.db.models.functions.datetime.Now())),
                ("updated_at", models.DateTimeField(db_default=django.db.models.functions.datetime.Now())),
                (
                    "metadata",
                    models.JSONField(default=dict, encoder=django.core.serializers.json.DjangoJSONEncoder),
                ),
            ],
            options={"verbose_name": "context", "db_table": "audit_stream_context"},
        ),
        migrations.RunSQL(triggers.ATTACH_CONTEXT_FUNCTION, triggers.DROP_ATTACH_CONTEXT_FUNCTION),
    ]
