"""The sinks admin: replaying, disabling and enabling are changes, refused to a user who may only view."""

import pytest
from django.contrib.auth.models import Permission
from django.urls import reverse

from audit_stream.models import Sink, SinkMessage

pytestmark = pytest.mark.django_db

CHANGELIST = "admin:audit_stream_sink_changelist"


def _staff(django_user_model, *codenames):
    user = django_user_model.objects.create_user("staff", password="pw", is_staff=True)
    user.user_permissions.set(
        Permission.objects.filter(content_type__app_label="audit_stream", codename__in=codenames)
    )
    return user


def _sink_with_a_dead_message(is_active=True):
    sink = Sink.objects.create(
        name="bus", kind="redis", target="redis://127.0.0.1:6379/3", is_active=is_active
    )
    SinkMessage.objects.create(sink=sink, event_type="t", payload={}, status="dead", attempts=3)
    return sink


@pytest.mark.parametrize("action", ["replay_dead", "disable_sinks", "enable_sinks"])
def test_sink_actions_need_the_change_permission(client, django_user_model, action):
    """A staff user who may only view sinks and their messages sees the list and runs none of its actions."""
    client.force_login(_staff(django_user_model, "view_sink", "view_sinkmessage"))
    sink = _sink_with_a_dead_message(is_active=action != "enable_sinks")
    assert client.get(reverse(CHANGELIST)).status_code == 200
    client.post(reverse(CHANGELIST), {"action": action, "_selected_action": [str(sink.pk)]})
    assert Sink.objects.get(pk=sink.pk).is_active == sink.is_active
    assert list(SinkMessage.objects.values_list("status", "attempts")) == [("dead", 3)]


def test_replaying_a_sink_also_needs_the_change_permission_on_its_messages(client, django_user_model):
    """Changing sinks is not enough to replay: replay changes messages too."""
    client.force_login(_staff(django_user_model, "view_sink", "change_sink"))
    sink = _sink_with_a_dead_message()
    client.post(reverse(CHANGELIST), {"action": "replay_dead", "_selected_action": [str(sink.pk)]})
    assert SinkMessage.objects.get().status == "dead"
    client.post(reverse(CHANGELIST), {"action": "disable_sinks", "_selected_action": [str(sink.pk)]})
    assert not Sink.objects.get(pk=sink.pk).is_active  # the change permission on sinks suffices here


def test_replaying_a_sink_runs_with_both_change_permissions(client, django_user_model):
    client.force_login(_staff(django_user_model, "view_sink", "change_sink", "change_sinkmessage"))
    sink = _sink_with_a_dead_message()
    client.post(reverse(CHANGELIST), {"action": "replay_dead", "_selected_action": [str(sink.pk)]})
    assert list(SinkMessage.objects.values_list("status", "attempts")) == [("pending", 0)]
