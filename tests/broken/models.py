"""Deliberately bad declarations, chosen by AUDIT_STREAM_BROKEN (see test_checks.py)."""

import os

from django.db import models

import audit_stream

case = os.environ.get("AUDIT_STREAM_BROKEN", "")


class Widget(models.Model):
    name = models.CharField(max_length=10)

    class Meta:
        app_label = "broken"


if case == "unknown_field":
    audit_stream.track(fields=["name", "colour"])(Widget)
elif case == "unknown_exclude":
    audit_stream.track(exclude=["weight"])(Widget)
elif case == "fields_and_exclude":
    audit_stream.track(fields=["name"], exclude=["id"])(Widget)
elif case == "duplicate_label":
    audit_stream.track(audit_stream.AfterInsert("changed"), audit_stream.AfterUpdate("changed"))(Widget)
elif case == "unknown_m2m_field":
    audit_stream.track(m2m_fields=["name"])(Widget)
elif case in ("not_postgresql", "bad_settings", "valid"):
    audit_stream.track()(Widget)
