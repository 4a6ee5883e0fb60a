"""The dashboard and the metrics per fold lane: each lane's checkpoint, backlog and lag, and a lane left
behind shown as stalled while the others fold (FOLD_LANES, audit_stream.stream.lanes)."""

import pytest
from django.db import connection
from django.test import Client
from django.urls import reverse
from prometheus_client.parser import text_string_to_metric_families

from audit_stream.dashboard import queries
from audit_stream.dashboard import stream as dashboard_stream
from audit_stream.dashboard.stream import Lane
from audit_stream.stream import fold, lanes
from tests.testapp.models import Product

pytestmark = pytest.mark.django_db(transaction=True)

PRODUCTS = "testapp_productevent"
LABEL = "testapp.ProductEvent"
LANES = 4


@pytest.fixture
def in_lanes(settings):
    """The product events folded in 4 lanes."""
    settings.AUDIT_STREAM = {**settings.AUDIT_STREAM, "FOLD_LANES": {LABEL: LANES}, "FOLD_LINGER": 0}


@pytest.fixture
def operator_client(django_user_model):
    client = Client()
    client.force_login(django_user_model.objects.create_superuser("root", "root@example.com", "pw"))
    return client


def _unfolded_by_lane() -> dict[int, int]:
    """Events without a change, per lane of their object (the fold's own definition, lanes.LANE_OF)."""
    lane_of = lanes.LANE_OF.replace("{object_id}", "e.pgh_obj_id::text")
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT {lane_of}, count(*) FROM {PRODUCTS} AS e"
            " WHERE NOT EXISTS (SELECT 1 FROM audit_stream_change AS c"
            "                   WHERE c.event_table = %(table)s AND c.event_id = e.pgh_id)"
            " GROUP BY 1",
            {"lanes": LANES, "table": PRODUCTS},
        )
        return dict(cursor.fetchall())


def _table(name=PRODUCTS):
    return next(t for t in queries.stream_tables() if t.event_table == name)


def _metrics(client) -> dict:
    text = client.get(reverse("audit_stream:metrics")).content.decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _write(count: int, prefix: str) -> None:
    Product.objects.bulk_create(Product(name=f"{prefix}{i}", price=1) for i in range(count))


def test_each_lane_shows_its_own_backlog_folded_count_and_checkpoint(in_lanes, operator_client):
    _write(20, "a")
    fold.fold(PRODUCTS)
    _write(30, "b")
    waiting = _unfolded_by_lane()
    assert len(waiting) > 1  # the new objects fall in several lanes

    table = _table()
    assert [lane.lane for lane in table.lanes] == list(range(LANES))
    assert {lane.lane: lane.backlog for lane in table.lanes} == {n: waiting.get(n, 0) for n in range(LANES)}
    assert table.backlog == 30 and sum(lane.folded_total for lane in table.lanes) == table.folded_total == 20
    assert all(lane.checkpoint_at is not None and lane.lanes == LANES for lane in table.lanes)
    assert not table.stalled_lanes  # the events are seconds old

    html = operator_client.get(reverse("audit_stream:overview")).content.decode()
    for lane in table.lanes:
        row = html[html.index(f'data-lane="{PRODUCTS}:{lane.lane}"') :]
        row = row[: row.index("</tr>")]
        assert f'data-figure="backlog">{waiting.get(lane.lane, 0)}<' in row
        assert f">{lane.snapshot}<" in row

    data = operator_client.get(reverse("audit_stream:overview_json")).json()
    (found,) = [t for t in data["tables"] if t["event_table"] == PRODUCTS]
    assert [(lane["lane"], lane["backlog"]) for lane in found["lanes"]] == [
        (n, waiting.get(n, 0)) for n in range(LANES)
    ]


def test_a_lane_left_behind_is_shown_stalled_on_the_page_in_the_json_and_in_the_metrics(
    in_lanes, operator_client, monkeypatch
):
    _write(20, "a")
    fold.fold(PRODUCTS)
    _write(40, "b")
    stuck = max(_unfolded_by_lane().items(), key=lambda item: item[1])[0]
    for lane in range(LANES):
        if lane != stuck:
            fold.fold(PRODUCTS, lane=lane)
    assert set(_unfolded_by_lane()) == {stuck}
    # Stalled after a millisecond instead of a minute: the events and the checkpoint are older than that.
    monkeypatch.setattr(dashboard_stream, "LANE_STALLED_SECONDS", 0.001)

    table = _table()
    assert [lane.lane for lane in table.stalled_lanes] == [stuck]

    html = operator_client.get(reverse("audit_stream:overview")).content.decode()
    warning = html[html.index('data-warning="stalled-lanes"') :]
    assert f'data-stalled="{PRODUCTS}:{stuck}"' in warning[: warning.index("</section>")]
    assert html.count('data-figure="stalled"') == 1

    data = operator_client.get(reverse("audit_stream:overview_json")).json()
    # (The operator's own user row is an event of another table, never folded here: stalled too.)
    assert [lane for lane in data["stalled_lanes"] if lane["event_table"] == PRODUCTS] == [
        {"event_table": PRODUCTS, "lane": stuck}
    ]

    samples = _metrics(operator_client)
    for lane in range(LANES):
        labels = frozenset({"table": PRODUCTS, "lane": str(lane)}.items())
        assert samples[("audit_stream_lane_stalled", labels)] == (1 if lane == stuck else 0)
        assert samples[("audit_stream_lane_backlog_events", labels)] == (
            _unfolded_by_lane()[stuck] if lane == stuck else 0
        )
        if lane == stuck:
            assert samples[("audit_stream_lane_lag_seconds", labels)] > 0
        assert ("audit_stream_lane_checkpoint_age_seconds", labels) in samples
    folded = sum(
        samples[
            ("audit_stream_lane_folded_events_total", frozenset({"table": PRODUCTS, "lane": str(n)}.items()))
        ]
        for n in range(LANES)
    )
    assert folded == samples[("audit_stream_folded_events_total", frozenset({"table": PRODUCTS}.items()))]


def test_a_table_never_folded_shows_the_lanes_the_setting_gives_it(in_lanes):
    _write(12, "a")
    table = _table()
    assert [(lane.lane, lane.lanes, lane.checkpoint_at) for lane in table.lanes] == [
        (n, LANES, None) for n in range(LANES)
    ]
    assert sum(lane.backlog for lane in table.lanes) == table.backlog == 12


def test_a_change_of_the_number_of_lanes_is_shown_until_the_next_fold_re_lanes_the_table(
    in_lanes, settings, operator_client
):
    _write(5, "a")
    fold.fold(PRODUCTS)
    settings.AUDIT_STREAM = {**settings.AUDIT_STREAM, "FOLD_LANES": {LABEL: 2}}
    table = _table()
    assert (len(table.lanes), table.lanes_configured, table.relaning) == (LANES, 2, True)
    html = operator_client.get(reverse("audit_stream:overview")).content.decode()
    assert "2 lanes configured: re-laned at the next fold" in html

    fold.fold(PRODUCTS)
    table = _table()
    assert (len(table.lanes), table.relaning) == (2, False)


def test_a_table_in_one_lane_has_lane_0_in_the_metrics(operator_client):
    _write(3, "a")
    samples = _metrics(operator_client)
    labels = frozenset({"table": PRODUCTS, "lane": "0"}.items())
    assert samples[("audit_stream_lane_backlog_events", labels)] == 3
    assert samples[("audit_stream_backlog_events", frozenset({"table": PRODUCTS}.items()))] == 3
    assert ("audit_stream_lane_checkpoint_age_seconds", labels) not in samples  # never folded


def _lane(**figures) -> Lane:
    base = {
        "lane": 0,
        "lanes": 2,
        "backlog": 5,
        "backlog_exact": True,
        "lag_seconds": 120.0,
        "folded_total": 0,
        "checkpoint_at": None,
        "checkpoint_age_seconds": 120.0,
        "snapshot": "1:1:",
        "position": None,
    }
    return Lane(**{**base, **figures})


@pytest.mark.django_db(transaction=False)
@pytest.mark.parametrize(
    ("figures", "stalled"),
    [
        ({}, True),  # events waited 2 minutes, the checkpoint stood still as long
        ({"checkpoint_age_seconds": None}, True),  # never folded at all
        ({"backlog": 0, "lag_seconds": None}, False),  # caught up, however long ago it moved
        ({"lag_seconds": 5.0}, False),  # its events are fresh: the fold may just not have run yet
        ({"checkpoint_age_seconds": 5.0}, False),  # behind, but moving
    ],
)
def test_a_lane_is_stalled_when_events_waited_a_minute_and_its_checkpoint_stood_still_as_long(
    figures, stalled
):
    assert _lane(**figures).stalled is stalled
