"""Statistics of messages per endpoint and status together, for the metrics' estimates.

The message gauges count up to 100 messages per endpoint and status and take
the planner's estimate above (audit_stream.dashboard.metrics). Without
statistics on the two columns together, the planner multiplies their separate
frequencies, which is wrong whenever they go together (an endpoint that is
down has mostly dead messages): a multivariate MCV list holds each pair's own
frequency. ANALYZE (or autovacuum's) fills it.
"""

from django.db import migrations

CREATE = (
    "CREATE STATISTICS IF NOT EXISTS audit_stream_msg_endpoint_status (mcv)"
    " ON endpoint_id, status FROM audit_stream_webhookmessage"
)
DROP = "DROP STATISTICS IF EXISTS audit_stream_msg_endpoint_status"


class Migration(migrations.Migration):
    dependencies = [
        ("audit_stream", "0025_i20_sinks"),
    ]

    operations = [migrations.RunSQL(CREATE, DROP)]
