"""Filter and action forms of the dashboard."""

from __future__ import annotations

from django import forms

from audit_stream.dashboard import queries
from audit_stream.webhooks.models import WebhookMessage

__all__ = ["ChangeFilterForm", "MessageFilterForm", "ReplayDeadForm"]


class DateTimeLocalInput(forms.DateTimeInput):
    """The browser's own date-and-time picker (times are in the site's time zone)."""

    input_type = "datetime-local"

    def __init__(self, attrs=None):
        super().__init__(attrs, format="%Y-%m-%dT%H:%M")


class MessageFilterForm(forms.Form):
    status = forms.ChoiceField(
        choices=[("", "any"), *WebhookMessage.STATUSES], required=False, label="status"
    )
    since = forms.DateTimeField(required=False, widget=DateTimeLocalInput, label="created from")
    until = forms.DateTimeField(required=False, widget=DateTimeLocalInput, label="to")

    def clean(self):
        data = super().clean()
        if data.get("since") and data.get("until") and data["since"] >= data["until"]:
            raise forms.ValidationError("The start of the time range must be before its end.")
        return data


class ReplayDeadForm(forms.Form):
    since = forms.DateTimeField(widget=DateTimeLocalInput, label="dead messages created since")


class ChangeFilterForm(forms.Form):
    model = forms.ChoiceField(required=False, label="model")
    object_id = forms.CharField(required=False, max_length=200, label="object id")
    label = forms.ChoiceField(required=False, label="label")
    user = forms.CharField(
        required=False,
        max_length=150,
        label="user",
        help_text='The "user" recorded in the context: a pk or a username.',
    )

    def __init__(self, *args, models: list[str] | None = None, **kwargs):
        """``models``: the models to offer (default: every tracked or logged model)."""
        super().__init__(*args, **kwargs)
        models = queries.tracked_models() if models is None else models
        self.fields["model"].choices = [("", "any"), *((m, m) for m in models)]
        self.fields["label"].choices = [("", "any"), *((label, label) for label in queries.event_labels())]
