"""Deliberately bad declarations, chosen by AUDIT_STREAM_BROKEN (see test_checks.py)."""

import os

import pgtrigger
from django.db import models

import audit_stream

case = os.environ.get("AUDIT_STREAM_BROKEN", "")


class Widget(models.Model):
    name = models.CharField(max_length=10)

    class Meta:
        app_label = "broken"


class Part(models.Model):
    widget = models.ForeignKey(Widget, null=True, on_delete=models.CASCADE)

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
elif case == "uninstallable_condition":
    # An insert has no OLD row: the trigger for this condition cannot be installed.
    audit_stream.track(
        audit_stream.AfterInsertOrUpdate(
            "renamed", condition=pgtrigger.Q(old__name__df=pgtrigger.F("new__name"))
        )
    )(Widget)
elif case == "unknown_mask":
    audit_stream.track(mask=["secret"])(Widget)
elif case == "unknown_m2m_field":
    audit_stream.track(m2m_fields=["name"])(Widget)
elif case in ("not_postgresql", "bad_settings", "valid"):
    audit_stream.track()(Widget)
elif case in ("cascading_obj_fk", "cascading_obj_fk_not_append_only"):
    audit_stream.track(
        obj_fk=models.ForeignKey(Widget, null=True, on_delete=models.SET_NULL, related_name="+")
    )(Widget)
elif case == "cascading_copied_fk":

    class PartEvent(audit_stream.get_event_model(Part)):
        widget = models.ForeignKey(Widget, null=True, on_delete=models.CASCADE, related_name="+")

        class Meta:
            app_label = "broken"
