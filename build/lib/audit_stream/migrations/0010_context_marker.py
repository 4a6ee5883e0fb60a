from django.db import migrations

from audit_stream import triggers


class Migration(migrations.Migration):
    """_audit_stream_attach_context leaves a session marker and keeps updated_at fresh."""

    dependencies = [("audit_stream", "0009_row_log")]

    operations = [migrations.RunSQL(triggers.ATTACH_CONTEXT_FUNCTION, migrations.RunSQL.noop)]
