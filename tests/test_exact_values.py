"""Every value exact: written through the ORM, a value reads back equal from the event row, the
change feed, the webhook body and after a revert (hypothesis, over every built-in and
``contrib.postgres`` field type; see docs/feed.md for each type's representation in the feed)."""

import math
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.db.backends.postgresql.psycopg_any import DateRange, DateTimeTZRange, NumericRange
from django.db.models import TextField
from django.db.models.functions import Cast
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from audit_stream import exact
from audit_stream.models import Change, Context
from audit_stream.revert import revert
from audit_stream.stream import fold
from audit_stream.webhooks.models import WebhookEndpoint, WebhookMessage
from tests.testapp.models import Everything, EverythingEvent

pytestmark = pytest.mark.django_db(transaction=True)

EVENTS = "testapp_everythingevent"
URL = "https://93.184.215.14/hook"  # a public address: never called here
FIELDS = [f for f in Everything._meta.concrete_fields if not f.primary_key and not f.generated]

# Text from every Unicode plane (0-16), as PostgreSQL can store it: no NUL, no lone surrogates.
_char = st.one_of(
    st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"),
    st.integers(0, 16).flatmap(
        lambda plane: st.characters(
            min_codepoint=max(1, plane << 16),
            max_codepoint=(plane << 16) | 0xFFFF,
            blacklist_categories=["Cs"],
        )
    ),
)


def _text(max_size):
    return st.text(_char, max_size=max_size)


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**80), 2**80) | _text(20)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_text(10), children, max_size=4),
    max_leaves=12,
)  # fmt: skip


def _range(cls, bound):
    """Ranges of ``bound`` values: empty, unbounded on either side, every bracket."""

    def build(lower, upper, brackets):
        if lower is not None and upper is not None and lower > upper:
            lower, upper = upper, lower
        return cls(lower, upper, brackets)

    bounded = st.builds(
        build, bound | st.none(), bound | st.none(), st.sampled_from(["[)", "[]", "()", "(]"])
    )
    return st.just(cls(empty=True)) | bounded


_aware = st.datetimes(min_value=datetime(2, 1, 1), max_value=datetime(9998, 12, 31), timezones=st.timezones())
_dates = st.dates(min_value=date(1, 1, 2), max_value=date(9998, 12, 30))

STRATEGIES = {
    "big": st.integers(-(2**63), 2**63 - 1),
    "binary": st.binary(max_size=64),
    "boolean": st.booleans(),
    "char": _text(100),
    "date": _dates,
    "datetime": _aware,
    "decimal": st.decimals(-(10**20) + 1, 10**20 - 1, places=10, allow_nan=False, allow_infinity=False),
    "duration": st.timedeltas(timedelta(days=-(10**6)), timedelta(days=10**6)),
    "email": _text(254),
    "file": _text(100),
    "file_path": _text(100),
    "float": st.floats(),  # NaN, ±Infinity and -0.0 included
    "ip": st.ip_addresses().map(str),
    "integer": st.integers(-(2**31), 2**31 - 2),  # `generated` is integer + 1
    "json": _json,
    "positive_big": st.integers(0, 2**63 - 1),
    "positive": st.integers(0, 2**31 - 1),
    "positive_small": st.integers(0, 2**15 - 1),
    "slug": _text(50),
    "small": st.integers(-(2**15), 2**15 - 1),
    "text": _text(500),
    "time": st.times(),
    "url": _text(200),
    "uuid": st.uuids(),
    "customer": st.none(),
    "integers": st.lists(st.integers(-(2**31), 2**31 - 1) | st.none(), max_size=5),
    "texts": st.lists(_text(20) | st.none(), max_size=5),
    "hstore": st.dictionaries(_text(10), _text(10) | st.none(), max_size=4),
    "integer_range": _range(NumericRange, st.integers(-(2**31) + 2, 2**31 - 2)),
    "big_range": _range(NumericRange, st.integers(-(2**63) + 2, 2**63 - 2)),
    "decimal_range": _range(NumericRange, st.decimals(allow_nan=False, allow_infinity=False, places=6)),
    "date_range": _range(DateRange, _dates),
    "datetime_range": _range(DateTimeTZRange, _aware),
}
assert set(STRATEGIES) == {f.name for f in FIELDS}, "every field of Everything needs a strategy"

VALUES = st.fixed_dictionaries({name: strategy | st.none() for name, strategy in STRATEGIES.items()})


def _same(a, b) -> bool:
    """Equal, with NaN equal to NaN and memoryview equal to its bytes."""
    if isinstance(a, memoryview):
        a = bytes(a)
    if isinstance(b, memoryview):
        b = bytes(b)
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def _differences(expected, actual) -> dict:
    """{attname: (expected, actual)} for every field (the generated one included) that differs."""
    return {
        f.attname: (getattr(expected, f.attname), getattr(actual, f.attname))
        for f in Everything._meta.concrete_fields
        if not f.primary_key and not _same(getattr(expected, f.attname), getattr(actual, f.attname))
    }


def _typed(snapshot: dict) -> Everything:
    """A feed snapshot back as typed values: PostgreSQL reads it into the table's row type.

    The recipe docs/feed.md gives consumers; hstore is compared as the JSON object it is.
    """
    rows = Everything.objects.raw(
        "SELECT * FROM jsonb_populate_record(NULL::testapp_everything, %s::jsonb)",
        [exact.dumps({k: v for k, v in snapshot.items() if k != "hstore"})],
    )
    (row,) = rows
    row.hstore = snapshot["hstore"]
    return row


def _same_float(feed, value: float) -> bool:
    """How a float column reads in the feed: a number that reads back as the same double
    (as Decimal or int, never float), or "NaN", "Infinity", "-Infinity"."""
    if math.isnan(value):
        return feed == "NaN"
    if math.isinf(value):
        return feed == ("Infinity" if value > 0 else "-Infinity")
    return isinstance(feed, Decimal | int) and float(feed) == value


@pytest.fixture
def endpoint():
    return WebhookEndpoint.objects.create(
        url="https://93.184.215.14/hook", filter_models=["testapp.everything"]
    )


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@given(values=VALUES)
def test_every_value_reads_back_equal_from_every_api(values, endpoint):
    """Event row, Change (typed back by PostgreSQL, and exact as decoded), webhook body, revert."""
    obj = Everything.objects.create(**values)
    live = Everything.objects.get(pk=obj.pk)  # PostgreSQL's canonical form (ranges, IPv6, JSON numbers)

    event = EverythingEvent.objects.get(pgh_obj_id=obj.pk)
    assert _differences(live, event) == {}

    fold.fold(EVENTS)
    change = Change.objects.get(event_table=EVENTS, event_id=event.pgh_id)
    assert _differences(live, _typed(change.snapshot)) == {}
    # As decoded, without PostgreSQL's help: numbers exact.
    if live.decimal is not None:
        assert change.snapshot["decimal"] == live.decimal
        assert exact.dumps(change.snapshot["decimal"]) == format(live.decimal, "f")
    for name in ("big", "positive_big", "integer", "small"):
        assert change.snapshot[name] == getattr(live, name) and not isinstance(change.snapshot[name], float)
    if live.float is not None:
        assert _same_float(change.snapshot["float"], live.float)
    assert change.snapshot["uuid"] == (str(live.uuid) if live.uuid else None)
    assert change.snapshot["hstore"] == live.hstore

    body = (
        WebhookMessage.objects.filter(change_id=change.id, endpoint=endpoint)
        .annotate(body=Cast("payload", TextField()))
        .get()
        .body
    )
    assert exact.loads(body)["data"]["snapshot"] == change.snapshot

    Everything.objects.filter(pk=obj.pk).update(**{f.attname: None for f in FIELDS})
    revert(event)
    assert _differences(live, Everything.objects.get(pk=obj.pk)) == {}


def test_a_change_in_the_last_digit_of_a_decimal_shows_in_the_diff():
    """30 digits, 10 after the point: a float would read both values as 1.2345678901234567e+19."""
    obj = Everything.objects.create(decimal=Decimal("12345678901234567890.1234567891"))
    Everything.objects.filter(pk=obj.pk).update(decimal=Decimal("12345678901234567890.1234567892"))
    fold.fold(EVENTS)
    last = Change.objects.filter(event_table=EVENTS).latest("event_id")
    assert last.diff == {
        "decimal": [Decimal("12345678901234567890.1234567891"), Decimal("12345678901234567890.1234567892")]
    }


def test_webhook_payloads_and_context_metadata_decode_exactly():
    """The stored payload and context metadata read back with Decimal, not float."""
    WebhookEndpoint.objects.create(url=URL)
    Everything.objects.create(decimal=Decimal("0.1000000000"), json={"x": 0.1})
    fold.fold(EVENTS)
    payload = WebhookMessage.objects.get().payload
    assert payload["data"]["snapshot"]["decimal"] == Decimal("0.1000000000")
    assert isinstance(payload["data"]["snapshot"]["json"]["x"], Decimal)
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO audit_stream_context (id, metadata) VALUES (gen_random_uuid(), '{\"r\": 2.50}')"
        )

    assert Context.objects.get().metadata == {"r": Decimal("2.50")}


def test_datetimes_in_the_feed_are_iso_8601_in_utc():
    """The documented representation of an aware datetime."""
    moment = datetime(2026, 12, 3, 9, 30, 1, 123456, tzinfo=UTC)
    Everything.objects.create(datetime=moment, duration=timedelta(days=1, seconds=1))
    fold.fold(EVENTS)
    snapshot = Change.objects.get(event_table=EVENTS).snapshot
    assert snapshot["datetime"] == "2026-12-03T09:30:01.123456+00:00"
    assert datetime.fromisoformat(snapshot["datetime"]) == moment
    assert snapshot["duration"] == "1 day 00:00:01"


def test_the_admin_and_the_dashboard_show_every_digit(admin_client):
    """The change list, a change's page and the dashboard's feed print the decimals PostgreSQL holds."""
    obj = Everything.objects.create(decimal=Decimal("12345678901234567890.1234567891"))
    Everything.objects.filter(pk=obj.pk).update(decimal=Decimal("12345678901234567890.1234567892"))
    fold.fold(EVENTS)
    change = Change.objects.filter(event_table=EVENTS).latest("event_id")
    pages = [
        admin_client.get("/admin/audit_stream/change/").content.decode(),
        admin_client.get(f"/admin/audit_stream/change/{change.pk}/change/").content.decode(),
        admin_client.get("/audit-stream/changes/").content.decode(),
    ]
    for page in pages:
        assert "12345678901234567890.1234567892" in page
        assert "e+19" not in page
    assert "&quot;decimal&quot;: 12345678901234567890.1234567892" in pages[1]  # the snapshot
