# pgh_created_at is the transaction's start time (now()), as in django-pghistory,
# not the statement's (Django's Now() is statement_timestamp() on PostgreSQL).

import audit_stream.models
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('audit_stream', '0012_delivery_counters'),
    ]

    operations = [
        migrations.AlterField(
            model_name='ddllog',
            name='pgh_created_at',
            field=models.DateTimeField(db_default=audit_stream.models.TransactionNow(), editable=False),
        ),
        migrations.AlterField(
            model_name='rowlog',
            name='pgh_created_at',
            field=models.DateTimeField(db_default=audit_stream.models.TransactionNow(), editable=False),
        ),
        migrations.AlterField(
            model_name='change',
            name='created_at',
            field=models.DateTimeField(help_text="The event's pgh_created_at: the start time of its transaction (not its commit time)."),
        ),
    ]
