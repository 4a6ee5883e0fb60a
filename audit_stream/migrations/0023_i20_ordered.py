"""Ordered delivery per object (audit_stream.ordering): the same columns, indexes and trigger on both
message tables, webhook messages (per endpoint) and sink messages (per sink)."""

import pgtrigger.compiler
import pgtrigger.migrations
from django.db import migrations, models

import audit_stream.triggers

_OWED = ("status__in", ["pending", "sending"])

# The unparking trigger (ordering.UnparkNext), as compiled for each table.
_UNPARK_CONDITION = (
    "WHEN (OLD.status IN ('pending', 'sending') AND NEW.status IN ('delivered', 'dead')"
    " AND NEW.object_key IS NOT NULL)"
)
_UNPARK_FUNC = (
    'UPDATE "public"."{table}" AS n SET held = false\n'
    "WHERE n.id = (\n"
    '    SELECT q.id FROM "public"."{table}" AS q\n'
    "    WHERE q.{subscriber}_id = NEW.{subscriber}_id\n"
    "      AND q.object_key IS NOT NULL AND q.object_key = NEW.object_key\n"
    "      AND q.status IN ('pending', 'sending') AND q.change_id > NEW.change_id\n"
    "    ORDER BY q.change_id\n"
    "    LIMIT 1\n"
    ") AND n.status IN ('pending', 'sending');\n"
    "RETURN NULL;"
)

# (subscriber model, its help text for `ordered`), (message model, its table, its foreign key, index
# prefix, the trigger's hash and pgid).
_TABLES = [
    (
        "sink",
        "Per object, in order: an object's next change is published once the previous one was acknowledged"
        " or went dead (other objects keep flowing). Applies to changes recorded from now on.",
        "sinkmessage",
        "audit_stream_sinkmessage",
        "sink",
        "audit_stream_sinkmsg",
        "2428a36418486620b23af5073ee669ea672c4d19",
        "pgtrigger_unpark_next_7b635",
    ),
    (
        "webhookendpoint",
        "Per object, in order: an object's next change is sent once the previous one was delivered"
        " or went dead (other objects keep flowing). Applies to changes recorded from now on.",
        "webhookmessage",
        "audit_stream_webhookmessage",
        "endpoint",
        "audit_stream_msg",
        "bf0b0a18754dcf25121f1489bcba850be018ef70",
        "pgtrigger_unpark_next_aef82",
    ),
]


def _operations(subscriber_model, help_text, model, table, subscriber, prefix, trigger_hash, pgid):
    return [
        migrations.RemoveIndex(model_name=model, name=f"{prefix}_owed"),
        migrations.AddField(
            model_name=subscriber_model,
            name="ordered",
            field=models.BooleanField(db_default=False, default=False, help_text=help_text),
        ),
        migrations.AddField(
            model_name=model,
            name="held",
            field=models.BooleanField(db_default=False, default=False, editable=False),
        ),
        migrations.AddField(
            model_name=model,
            name="object_key",
            field=models.TextField(blank=True, editable=False, null=True),
        ),
        migrations.AddIndex(
            model_name=model,
            index=models.Index(
                models.F(subscriber),
                models.Case(
                    models.When(status="pending", then=models.F("next_attempt_at")),
                    default=models.F("lease_until"),
                ),
                condition=models.Q(_OWED, ("held", False)),
                name=f"{prefix}_claimable",
            ),
        ),
        migrations.AddIndex(
            model_name=model,
            index=models.Index(
                condition=models.Q(_OWED, ("object_key__isnull", False)),
                fields=[subscriber, "object_key", "change_id"],
                name=f"{prefix}_object",
            ),
        ),
        pgtrigger.migrations.AddTrigger(
            model_name=model,
            trigger=pgtrigger.compiler.Trigger(
                name="unpark_next",
                sql=audit_stream.triggers.TriggerSql(
                    condition=_UNPARK_CONDITION,
                    func=_UNPARK_FUNC.format(table=table, subscriber=subscriber),
                    hash=trigger_hash,
                    operation="UPDATE",
                    pgid=pgid,
                    table=table,
                    when="AFTER",
                ),
            ),
        ),
    ]


class Migration(migrations.Migration):
    dependencies = [
        ("audit_stream", "0021_i19_lanes"),
    ]

    operations = [operation for tables in _TABLES for operation in _operations(*tables)]
