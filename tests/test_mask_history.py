"""manage.py mask_history: history folded before a field was masked, rewritten with the mask (remasking)."""

from __future__ import annotations

import hashlib
import hmac
import io
import json

import pytest
from django.core.management import CommandError, call_command

from audit_stream.models import Change, Sink, SinkMessage, WebhookEndpoint, WebhookMessage
from audit_stream.stream import fold
from audit_stream.webhooks import delivery
from tests import test_masking, test_security
from tests.sink_servers import REDIS_URL, unique
from tests.testapp.models import Patient, PatientEvent, Product, Supplier

pytestmark = pytest.mark.django_db(transaction=True)

EMAIL = "ada@example.com"
KEY = "a-mask-key-for-the-tests"
MASKED = {"MASK": {"testapp.Patient": ["email"]}}

# The roles of a deployment (an owner, the application's runtime role), as test_security sets them up,
# and the tables of testapp logged by initlogging, as test_masking does.
deployment = test_security.deployment
logged = test_masking.logged


@pytest.fixture(autouse=True)
def _settings(settings):
    settings.AUDIT_STREAM = {"WEBHOOK_ALLOWED_NETWORKS": ["127.0.0.0/8"]}


def _keyed(value: str) -> str:
    return "hmac:" + hmac.new(KEY.encode(), value.encode(), hashlib.sha256).hexdigest()[:16]


def _mask_history(*args: str) -> str:
    out = io.StringIO()
    call_command("mask_history", "--no-input", *args, stdout=out)
    return out.getvalue()


def _folded_in_clear() -> Patient:
    """A patient whose email was folded before email was masked: two changes, the email clear in both."""
    patient = Patient.objects.create(name="Ada", email=EMAIL)
    Patient.objects.filter(pk=patient.pk).update(email="ada@example.org")
    fold.fold_all()
    return patient


def _changes(patient: Patient) -> list[Change]:
    changes = Change.objects.filter(model="testapp.patient", object_id=str(patient.pk))
    return list(changes.order_by("event_id"))


def test_a_field_masked_after_it_was_folded_is_masked_in_the_changes_diff_and_snapshot(settings):
    """The clear values of the newly masked field become "***"; the other fields stay as they were."""
    patient = _folded_in_clear()
    settings.AUDIT_STREAM = MASKED
    _mask_history()
    insert, update = _changes(patient)
    assert insert.diff["email"] == [None, "***"] and insert.snapshot["email"] == "***"
    assert update.diff == {"email": ["***", "***"]} and update.snapshot["email"] == "***"
    assert insert.snapshot["name"] == "Ada" and insert.diff["name"] == [None, "Ada"]
    assert "example" not in json.dumps([insert.diff, update.diff, insert.snapshot, update.snapshot])


def test_the_event_table_keeps_the_clear_value(settings):
    """History is not rewritten: revert, undo and as_of read the value from the event table."""
    patient = _folded_in_clear()
    settings.AUDIT_STREAM = MASKED
    _mask_history()
    assert list(PatientEvent.objects.filter(pgh_obj=patient).values_list("email", flat=True)) == [
        EMAIL,
        "ada@example.org",
    ]


def test_with_a_mask_key_a_value_is_masked_as_the_fold_would_mask_it(settings):
    """MASK_KEY: the keyed mask of the value, equal to what a change folded with the mask shows."""
    patient = _folded_in_clear()
    settings.AUDIT_STREAM = {**MASKED, "MASK_KEY": KEY}
    _mask_history()
    insert, update = _changes(patient)
    assert update.diff == {"email": [_keyed(EMAIL), _keyed("ada@example.org")]}
    fresh = Patient.objects.create(name="Bob", email=EMAIL)
    fold.fold_all()
    (folded_masked,) = _changes(fresh)
    assert insert.snapshot["email"] == folded_masked.snapshot["email"] == _keyed(EMAIL)


def test_the_next_change_compares_against_the_rewritten_change(settings):
    """The rewrite keeps the value's digest: a later change of another field leaves the masked one out."""
    patient = _folded_in_clear()
    settings.AUDIT_STREAM = MASKED
    _mask_history()
    Patient.objects.filter(pk=patient.pk).update(visits=1)
    fold.fold_all()
    assert _changes(patient)[-1].diff == {"visits": [0, 1]}


def test_a_second_run_rewrites_nothing(settings):
    """Idempotent: values already masked are left as they are."""
    patient = _folded_in_clear()
    settings.AUDIT_STREAM = {**MASKED, "MASK_KEY": KEY}
    assert "2 row(s) rewritten" in _mask_history()
    before = [(c.diff, c.snapshot, c.mask_digests) for c in _changes(patient)]
    assert "0 row(s) rewritten" in _mask_history()
    assert [(c.diff, c.snapshot, c.mask_digests) for c in _changes(patient)] == before


def test_a_fixed_mask_stays_when_a_mask_key_is_set_later(settings):
    """A "***" is a mask already: setting MASK_KEY afterwards does not hash it."""
    patient = _folded_in_clear()
    settings.AUDIT_STREAM = MASKED
    _mask_history()
    settings.AUDIT_STREAM = {**MASKED, "MASK_KEY": KEY}
    assert "0 row(s) rewritten" in _mask_history()
    assert _changes(patient)[0].snapshot["email"] == "***"


def test_small_batches_rewrite_every_change(settings):
    """--batch-size 1: one change per transaction, all of them rewritten."""
    patients = [_folded_in_clear() for _ in range(3)]
    settings.AUDIT_STREAM = MASKED
    assert "6 row(s) rewritten" in _mask_history("--batch-size", "1")
    assert {c.snapshot["email"] for p in patients for c in _changes(p)} == {"***"}


def test_a_dry_run_counts_and_changes_nothing(settings):
    """--dry-run: the count of what would be rewritten, and every row as it was."""
    patient = _folded_in_clear()
    settings.AUDIT_STREAM = MASKED
    out = io.StringIO()
    call_command("mask_history", "--dry-run", stdout=out)
    assert "Dry run: nothing was rewritten." in out.getvalue()
    assert "would rewrite" in out.getvalue()
    assert [c.snapshot["email"] for c in _changes(patient)] == [EMAIL, "ada@example.org"]


def test_owed_and_dead_webhook_messages_are_rewritten_delivered_ones_are_counted(settings):
    """Pending and dead messages (a replay sends them again) get the mask; a delivered one is gone."""
    endpoint = WebhookEndpoint.objects.create(url="http://127.0.0.1:9/hook")
    _folded_in_clear()
    first, second = WebhookMessage.objects.filter(endpoint=endpoint).order_by("change_id")
    WebhookMessage.objects.filter(pk=first.pk).update(status="delivered")
    third = Patient.objects.create(name="Cy", email="cy@example.com")
    fold.fold_all()
    WebhookMessage.objects.filter(endpoint=endpoint, change_id__gt=second.change_id).update(status="dead")
    settings.AUDIT_STREAM = MASKED
    out = _mask_history()
    assert "1 delivered message(s) carried clear values" in out
    payloads = {m.pk: m.payload for m in WebhookMessage.objects.filter(endpoint=endpoint)}
    assert payloads[first.pk]["data"]["snapshot"]["email"] == EMAIL
    assert payloads[second.pk]["data"]["diff"]["email"] == ["***", "***"]
    dead = [p for pk, p in payloads.items() if p["data"]["object_id"] == str(third.pk)]
    assert dead[0]["data"]["snapshot"]["email"] == "***"


def test_owed_sink_messages_are_rewritten(settings):
    """A sink's pending messages carry the mask when they are published."""
    sink = Sink.objects.create(name=unique("remask"), kind="redis", target=REDIS_URL)
    _folded_in_clear()
    settings.AUDIT_STREAM = MASKED
    _mask_history()
    payloads = [m.payload for m in SinkMessage.objects.filter(sink=sink)]
    assert [p["data"]["snapshot"]["email"] for p in payloads] == ["***", "***"]
    assert "example" not in json.dumps(payloads)


def test_test_messages_without_a_diff_are_left_alone(settings):
    """A webhook test message has no diff nor snapshot: it is skipped, not broken."""
    endpoint = WebhookEndpoint.objects.create(url="http://127.0.0.1:9/hook")
    test_message = delivery.send_test(endpoint)
    _folded_in_clear()
    settings.AUDIT_STREAM = MASKED
    _mask_history()
    assert WebhookMessage.objects.get(pk=test_message.pk).payload["data"] == {"message": "It works."}


def test_model_limits_the_rewrite_to_one_model(settings):
    """--model testapp.Patient: only its changes; another masked model's stay as they are."""
    patient = _folded_in_clear()
    product = Product.objects.create(name="kept clear", price=1)
    fold.fold_all()
    settings.AUDIT_STREAM = {"MASK": {"testapp.Patient": ["email"], "testapp.Product": ["name"]}}
    _mask_history("--model", "testapp.Patient")
    assert _changes(patient)[0].snapshot["email"] == "***"
    product_change = Change.objects.get(model="testapp.product", object_id=str(product.pk))
    assert product_change.snapshot["name"] == "kept clear"


def test_a_model_without_a_masked_field_is_refused_with_the_fix(settings):
    """--model naming a model whose changes have no masked field: an error that says to mask it first."""
    _folded_in_clear()
    with pytest.raises(CommandError, match=r"no change of it has a masked field.*Mask the field first"):
        _mask_history("--model", "testapp.Product")


def test_without_a_terminal_it_asks_for_no_input(settings):
    """Under pytest stdin is no terminal: the command refuses instead of guessing, and rewrites nothing."""
    patient = _folded_in_clear()
    settings.AUDIT_STREAM = MASKED
    with pytest.raises(CommandError, match=r"rewrites history.*no terminal to ask on"):
        call_command("mask_history", stdout=io.StringIO())
    assert _changes(patient)[0].snapshot["email"] == EMAIL


def test_the_changes_of_a_table_logged_by_initlogging_are_rewritten(logged, settings):
    """A column masked per table: the row log's changes get the mask; the row log keeps the value."""
    supplier = Supplier.objects.create(name="Acme")
    Supplier.objects.filter(pk=supplier.pk).update(name="Acme Ltd")
    fold.fold_all()
    settings.AUDIT_STREAM = {"MASK": {"testapp_supplier": ["name"]}}
    _mask_history()
    insert, update = Change.objects.filter(model="testapp.supplier", object_id=str(supplier.pk)).order_by(
        "event_id"
    )
    assert insert.snapshot["name"] == "***" and update.diff == {"name": ["***", "***"]}
    assert insert.snapshot["active"] is True


def test_the_runtime_role_may_rewrite_the_feed(deployment, settings):
    """The application's role has UPDATE on the stream's tables: an operator needs no owner role for this."""
    patient = _folded_in_clear()
    settings.AUDIT_STREAM = MASKED
    with test_security._django_as(deployment.runtime):
        _mask_history()
    assert {c.snapshot["email"] for c in _changes(patient)} == {"***"}
