# Each sink's claim floor (audit_stream.ordering), as webhook endpoints have had since 0040: a
# sink's claims read from it, not from the index entries every published message leaves behind.

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('audit_stream', '0040_due_floor'),
    ]

    operations = [
        migrations.AddField(
            model_name='sink',
            name='due_floor',
            field=models.DateTimeField(blank=True, editable=False, null=True),
        ),
    ]
