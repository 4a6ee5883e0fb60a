"""Masked fields: clear in the event tables, masked everywhere else (audit_stream.masking)."""

from __future__ import annotations

import hashlib
import hmac
import io
import json

import pytest
import redis
from django.contrib.auth.models import Permission
from django.core.management import call_command
from django.test import Client
from django.urls import reverse
from standardwebhooks.webhooks import Webhook

import audit_stream
from audit_stream import checks
from audit_stream.models import AggregateEvent, Change, RowLog, Sink, WebhookEndpoint
from audit_stream.sinks import delivery as sink_delivery
from audit_stream.stream import fold
from audit_stream.webhooks import delivery
from tests.sink_servers import REDIS_URL, unique
from tests.testapp.models import Patient, PatientEvent, Supplier

pytestmark = pytest.mark.django_db(transaction=True)

SSN = "123-45-6789"
KEY = "a-mask-key-for-the-tests"


@pytest.fixture(autouse=True)
def _settings(settings):
    settings.AUDIT_STREAM = {
        "WEBHOOK_ALLOWED_NETWORKS": ["127.0.0.0/8"],
        "WEBHOOK_RETRY_SCHEDULE": [0, 0.05],
        "SINK_RETRY_SCHEDULE": [0, 0.05],
        "WEBHOOK_TIMEOUT": [1, 0.5],
    }


def _changes(obj):
    return list(Change.objects.filter(model="testapp.patient", object_id=str(obj.pk)).order_by("event_id"))


def _keyed(value: str) -> str:
    return "hmac:" + hmac.new(KEY.encode(), value.encode(), hashlib.sha256).hexdigest()[:16]


def test_the_change_shows_a_masked_field_as_the_mask():
    """track(mask=["ssn"]): Change.diff and Change.snapshot hold "***", never the value."""
    patient = Patient.objects.create(name="Ada", ssn=SSN)
    fold.fold_all()
    (change,) = _changes(patient)
    assert change.diff["ssn"] == [None, "***"]
    assert change.snapshot["ssn"] == "***"
    assert change.snapshot["name"] == "Ada"
    assert SSN not in json.dumps([change.diff, change.snapshot, change.mask_digests])


def test_the_event_table_keeps_the_clear_value():
    """Undo, revert and as_of read the event tables: they hold the value itself."""
    patient = Patient.objects.create(name="Ada", ssn=SSN)
    assert PatientEvent.objects.get(pgh_obj=patient).ssn == SSN


def test_a_change_of_a_masked_field_alone_is_delivered_with_a_masked_diff():
    """The diff says the field changed (both sides masked), also when the previous state was folded before."""
    patient = Patient.objects.create(name="Ada", ssn=SSN)
    fold.fold_all()
    Patient.objects.filter(pk=patient.pk).update(ssn="987-65-4321")
    fold.fold_all()
    assert _changes(patient)[1].diff == {"ssn": ["***", "***"]}


def test_an_unchanged_masked_field_is_not_in_the_diff():
    """The fold compares keyed digests, not masks: a change of another field leaves the masked one out."""
    patient = Patient.objects.create(name="Ada", ssn=SSN)
    fold.fold_all()
    Patient.objects.filter(pk=patient.pk).update(visits=1)
    fold.fold_all()
    assert _changes(patient)[1].diff == {"visits": [0, 1]}


def test_the_setting_masks_a_field_of_a_model(settings):
    """AUDIT_STREAM["MASK"] = {"testapp.Patient": ["email"]} masks email as well as track()'s ssn."""
    settings.AUDIT_STREAM = {"MASK": {"testapp.Patient": ["email"]}}
    patient = Patient.objects.create(name="Ada", ssn=SSN, email="ada@example.com")
    fold.fold_all()
    (change,) = _changes(patient)
    assert (change.snapshot["email"], change.snapshot["ssn"]) == ("***", "***")


def test_a_keyed_mask_is_equal_for_equal_values_and_differs_for_different_ones(settings):
    """MASK_KEY: "hmac:" + 16 hex digits of HMAC-SHA256(key, value); old and new differ in a diff."""
    settings.AUDIT_STREAM = {"MASK_KEY": KEY}
    ada = Patient.objects.create(name="Ada", ssn=SSN)
    bob = Patient.objects.create(name="Bob", ssn=SSN)
    fold.fold_all()
    Patient.objects.filter(pk=ada.pk).update(ssn="987-65-4321")
    fold.fold_all()
    ada_insert, ada_update = _changes(ada)
    (bob_insert,) = _changes(bob)
    assert ada_insert.snapshot["ssn"] == bob_insert.snapshot["ssn"] == _keyed(SSN)
    assert ada_update.diff == {"ssn": [_keyed(SSN), _keyed("987-65-4321")]}


def test_a_field_masked_after_changes_were_folded_never_shows_its_earlier_value(settings):
    """The first change folded after masking lists the field once, as unknown before: never the old value."""
    settings.AUDIT_STREAM = {"MASK_KEY": KEY}
    patient = Patient.objects.create(name="Ada", email="ada@example.com")
    fold.fold_all()
    settings.AUDIT_STREAM = {"MASK": {"testapp.Patient": ["email"]}, "MASK_KEY": KEY}
    Patient.objects.filter(pk=patient.pk).update(visits=1)
    fold.fold_all()
    later = _changes(patient)[1]
    assert later.diff == {"visits": [0, 1], "email": [None, _keyed("ada@example.com")]}
    assert later.snapshot["email"] == _keyed("ada@example.com")


def test_the_webhook_payload_is_masked(httpserver):
    """What a subscriber receives carries the mask, never the value."""
    httpserver.expect_request("/hook", method="POST").respond_with_data("ok")
    endpoint = WebhookEndpoint.objects.create(url=httpserver.url_for("/hook"))
    Patient.objects.create(name="Ada", ssn=SSN)
    fold.fold_all()
    assert delivery.deliver(endpoint.pk).delivered == 1
    ((request, _),) = httpserver.log
    payload = Webhook(endpoint.secret).verify(request.get_data(), dict(request.headers))
    assert payload["data"]["diff"]["ssn"] == [None, "***"]
    assert payload["data"]["snapshot"]["ssn"] == "***"
    assert SSN not in request.get_data(as_text=True)


def test_the_redis_stream_entry_is_masked():
    """A sink gets the webhook payload: masked too."""
    prefix = unique("i20mask")
    sink = Sink.objects.create(name=prefix, kind="redis", target=REDIS_URL, options={"stream_prefix": prefix})
    client = redis.Redis.from_url(REDIS_URL)
    try:
        Patient.objects.create(name="Ada", ssn=SSN)
        fold.fold_all()
        assert sink_delivery.deliver(sink.pk).delivered == 1
        ((_, fields),) = client.xrange(f"{prefix}:testapp.patient")
        payload = json.loads(fields[b"payload"])
        assert payload["data"]["snapshot"]["ssn"] == "***"
        assert SSN.encode() not in fields[b"payload"]
    finally:
        for key in client.scan_iter(f"{prefix}:*"):
            client.delete(key)


def test_aggregate_event_shows_the_mask():
    """AggregateEvent reads the event tables: its pgh_data and pgh_diff are masked as the feed is."""
    patient = Patient.objects.create(name="Ada", ssn=SSN)
    Patient.objects.filter(pk=patient.pk).update(ssn="987-65-4321")
    Patient.objects.filter(pk=patient.pk).update(visits=1)
    first, ssn_changed, visited = AggregateEvent.objects.target(patient).order_by("pgh_id")
    assert first.pgh_data["ssn"] == "***"
    assert ssn_changed.pgh_diff == {"ssn": ["***", "***"]}
    assert visited.pgh_diff == {"visits": [0, 1]}


def test_aggregate_event_shows_the_same_keyed_mask_as_the_feed(settings):
    """With MASK_KEY, AggregateEvent's masked values are the feed's: one SQL builder for both."""
    settings.AUDIT_STREAM = {"MASK_KEY": KEY}
    patient = Patient.objects.create(name="Ada", ssn=SSN)
    Patient.objects.filter(pk=patient.pk).update(ssn="987-65-4321")
    fold.fold_all()
    _, changed = AggregateEvent.objects.target(patient).order_by("pgh_id")
    assert changed.pgh_diff == _changes(patient)[1].diff == {"ssn": [_keyed(SSN), _keyed("987-65-4321")]}


def test_the_admin_history_shows_the_mask(admin_client):
    """The history page of a tracked model (VersionModelAdmin) shows "***" for the masked field."""
    patient = Patient.objects.create(name="Ada", ssn=SSN)
    Patient.objects.filter(pk=patient.pk).update(ssn="987-65-4321")
    html = admin_client.get(reverse("admin:testapp_patient_history", args=[patient.pk])).content.decode()
    assert "<del>***</del>" in html and "<ins>***</ins>" in html and "Ada" in html
    assert SSN not in html and "987-65-4321" not in html


def test_the_dashboard_change_feed_shows_the_mask(django_user_model):
    """The dashboard reads Change: the mask, never the value."""
    operator = django_user_model.objects.create_user("operator", is_staff=True)
    for codename in ("view_dashboard", "view_patient"):
        operator.user_permissions.add(Permission.objects.get(codename=codename))
    client = Client()
    client.force_login(operator)
    Patient.objects.create(name="Ada", ssn=SSN)
    fold.fold_all()
    html = client.get(reverse("audit_stream:changes")).content.decode()
    assert "Ada" in html and "***" in html
    assert SSN not in html


def test_the_revert_confirmation_shows_the_mask_and_the_revert_puts_the_value_back(admin_client):
    """Revert reads the event table: the page shows "***", the row gets the recorded value."""
    patient = Patient.objects.create(name="Ada", ssn=SSN)
    Patient.objects.filter(pk=patient.pk).update(ssn="987-65-4321")
    first = PatientEvent.objects.filter(pgh_obj=patient).earliest("pgh_id")
    url = reverse("admin:testapp_patient_revert", args=[patient.pk, f"{first._meta.db_table}:{first.pgh_id}"])
    html = admin_client.get(url).content.decode()
    assert "<ins>***</ins>" in html and SSN not in html and "987-65-4321" not in html
    assert admin_client.post(url).status_code == 302
    patient.refresh_from_db()
    assert patient.ssn == SSN


def test_the_as_of_page_shows_the_mask(admin_client):
    """ "View as of this version" rebuilds the object from the event table: its masked field shows "***"."""
    patient = Patient.objects.create(name="Ada", ssn=SSN)
    first = PatientEvent.objects.get(pgh_obj=patient)
    url = reverse("admin:testapp_patient_as_of", args=[patient.pk, f"{first._meta.db_table}:{first.pgh_id}"])
    html = admin_client.get(url).content.decode()
    assert "***" in html and "Ada" in html and SSN not in html


@pytest.fixture
def undone_request():
    """A request that changed a patient's ssn: undoing it puts the first ssn back."""
    patient = Patient.objects.create(name="Ada", ssn=SSN)
    with audit_stream.context(url="/edit/") as ctx:
        Patient.objects.filter(pk=patient.pk).update(ssn="987-65-4321")
    return patient, ctx.id


def test_the_undo_confirmation_page_shows_the_mask(admin_client, undone_request):
    """Undo reads the event tables; its confirmation page shows masked fields masked."""
    _, context_id = undone_request
    html = admin_client.get(reverse("admin:audit_stream_context_undo", args=[context_id])).content.decode()
    assert "<ins>***</ins>" in html and SSN not in html and "987-65-4321" not in html


def test_the_undo_command_prints_the_mask_and_puts_the_value_back(undone_request):
    """manage.py undo lists masked fields masked, and writes the recorded value."""
    patient, context_id = undone_request
    out = io.StringIO()
    call_command("undo", str(context_id), "--no-input", stdout=out, stderr=io.StringIO())
    assert "ssn: *** -> ***" in out.getvalue() and SSN not in out.getvalue()
    patient.refresh_from_db()
    assert patient.ssn == SSN


def test_the_event_admin_page_leaves_a_masked_field_out(admin_client):
    """The event model's own admin page reads the event table: the masked field is not on it."""
    patient = Patient.objects.create(name="Ada", ssn=SSN)
    event = PatientEvent.objects.get(pgh_obj=patient)
    html = admin_client.get(reverse("admin:testapp_patientevent_change", args=[event.pk])).content.decode()
    assert "Ada" in html and SSN not in html


@pytest.fixture
def logged():
    call_command("initlogging", stdout=io.StringIO(), stderr=io.StringIO())
    yield
    call_command("droplogging", stdout=io.StringIO())


def test_a_column_of_a_table_logged_by_initlogging_is_masked_per_table(logged, settings):
    """AUDIT_STREAM["MASK"] = {"testapp_supplier": ["name"]}: the row log's changes show "***"."""
    settings.AUDIT_STREAM = {"MASK": {"testapp_supplier": ["name"]}}
    supplier = Supplier.objects.create(name="Acme")
    Supplier.objects.filter(pk=supplier.pk).update(name="Acme Ltd")
    fold.fold_all()
    insert, update = Change.objects.filter(model="testapp.supplier", object_id=str(supplier.pk)).order_by(
        "event_id"
    )
    assert insert.diff["name"] == [None, "***"] and insert.snapshot["active"] is True
    assert update.diff == {"name": ["***", "***"]}
    assert update.snapshot["name"] == "***"
    assert "Acme" not in json.dumps([insert.diff, insert.snapshot, update.diff, update.snapshot], default=str)


def test_a_logged_column_masked_after_changes_were_folded_is_masked_in_later_snapshots(logged, settings):
    """The row log's state carries columns an update did not touch: masked, also if folded clear before."""
    supplier = Supplier.objects.create(name="Acme")
    fold.fold_all()
    settings.AUDIT_STREAM = {"MASK": {"testapp_supplier": ["name"]}, "MASK_KEY": KEY}
    Supplier.objects.filter(pk=supplier.pk).update(active=False)
    Supplier.objects.filter(pk=supplier.pk).update(active=True)
    fold.fold_all()
    first, second = Change.objects.filter(model="testapp.supplier", label="update").order_by("event_id")
    assert first.snapshot["name"] == second.snapshot["name"] == _keyed("Acme")


def test_the_admin_history_of_a_logged_table_shows_the_mask(logged, settings, admin_client):
    """The history page of a model logged by initlogging masks the row log's entries."""
    settings.AUDIT_STREAM = {"MASK": {"testapp.Supplier": ["name"]}}
    supplier = Supplier.objects.create(name="Acme")
    Supplier.objects.filter(pk=supplier.pk).update(name="Acme Ltd", active=False)
    html = admin_client.get(reverse("admin:testapp_supplier_history", args=[supplier.pk])).content.decode()
    assert "<ins>***</ins>" in html and "<del>***</del>" in html
    assert "<ins>Acme Ltd</ins>" not in html and "<ins>Acme</ins>" not in html


def test_the_row_log_admin_page_shows_the_mask(logged, settings, admin_client):
    """A row log entry's page shows its masked columns masked."""
    settings.AUDIT_STREAM = {"MASK": {"testapp_supplier": ["name"]}}
    Supplier.objects.create(name="Acme")
    entry = RowLog.objects.get(logged_table="public.testapp_supplier")
    html = admin_client.get(reverse("admin:audit_stream_rowlog_change", args=[entry.pk])).content.decode()
    assert "&quot;name&quot;: &quot;***&quot;" in html and "Acme" not in html


def test_a_mask_setting_naming_an_unknown_field_is_a_system_check_error(settings):
    """audit_stream.E013 names the model and the field, and lists the model's fields."""
    settings.AUDIT_STREAM = {"MASK": {"testapp.Patient": ["sssn"]}}
    (error,) = checks.check_mask()
    assert error.id == "audit_stream.E013"
    assert "'sssn'" in error.msg and "testapp.Patient" in error.msg and "ssn" in error.msg


@pytest.mark.parametrize(
    "setting",
    [{"MASK": {"testapp.Patient": "ssn"}}, {"MASK": {"auth_user": ["nope"]}}, {"MASK_KEY": "short"}],
    ids=["not-a-list", "unknown-column-of-a-table", "short-key"],
)
def test_other_bad_mask_settings_are_system_check_errors(settings, setting):
    settings.AUDIT_STREAM = setting
    assert [e.id for e in checks.check_mask()] == ["audit_stream.E013"]
