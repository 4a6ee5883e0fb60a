from django.db import migrations

from audit_stream import triggers


class Migration(migrations.Migration):
    dependencies = [("audit_stream", "0003_monitoring")]

    operations = [migrations.RunSQL(triggers.DIFF_FUNCTION, triggers.DROP_DIFF_FUNCTION)]
