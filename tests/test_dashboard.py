"""The operator dashboard: who may see it, its figures against a known state, its actions, no secrets."""

import re
from datetime import timedelta
from html import unescape
from urllib.parse import parse_qs, quote

import psycopg
import pytest
from django.contrib.auth.models import Permission
from django.db import connection
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families
from werkzeug import Response

import audit_stream
from audit_stream import retention as retention_module
from audit_stream import tasks
from audit_stream.dashboard import access, paging, queries
from audit_stream.dashboard import stream as dashboard_stream
from audit_stream.models import Change, Checkpoint, FoldRun, Heartbeat, RetentionRun
from audit_stream.stream import fold
from audit_stream.webhooks import delivery
from audit_stream.webhooks.models import WebhookAttempt, WebhookEndpoint, WebhookMessage
from tests.testapp.models import Customer, Order, Product

pytestmark = pytest.mark.django_db

PRODUCTS = "testapp_productevent"
PUBLIC_URL = "http://93.184.215.14/hook"  # a public address: no DNS, never called here


# --------------------------------------------------------------------------- fixtures


# What an operator is given: the dashboard, replaying messages, and the test app's data.
OPERATOR_PERMISSIONS = [
    "audit_stream.view_dashboard",
    "audit_stream.change_webhookmessage",
    "testapp.view_product",
    "testapp.view_order",
    "testapp.view_customer",
]


def _user(django_user_model, username, *, staff, permitted=False, superuser=False, permissions=()):
    """A user; ``permitted``: with audit_stream.view_dashboard; ``permissions``: "app_label.codename"s."""
    user = django_user_model.objects.create_user(
        username, password="pw", is_staff=staff, is_superuser=superuser
    )
    wanted = [*(["audit_stream.view_dashboard"] if permitted else []), *permissions]
    for name in wanted:
        app_label, codename = name.split(".")
        user.user_permissions.add(
            Permission.objects.get(codename=codename, content_type__app_label=app_label)
        )
    return user


@pytest.fixture
def operator(django_user_model):
    """Staff who may view the dashboard, replay messages and view the test app's models."""
    return _user(django_user_model, "operator", staff=True, permissions=OPERATOR_PERMISSIONS)


@pytest.fixture
def operator_client(operator):
    client = Client()
    client.force_login(operator)
    return client


@pytest.fixture
def endpoint():
    return WebhookEndpoint.objects.create(url=PUBLIC_URL, description="crm")


@pytest.fixture
def message(endpoint):
    return WebhookMessage.objects.create(
        endpoint=endpoint, event_type="testapp.product.snapshot", payload={"price": 1}, status="dead"
    )


def _pages(endpoint, message):
    return [
        reverse("audit_stream:overview"),
        reverse("audit_stream:overview_json"),
        reverse("audit_stream:metrics"),
        reverse("audit_stream:webhooks"),
        reverse("audit_stream:endpoint", args=[endpoint.pk]),
        reverse("audit_stream:message", args=[message.pk]),
        reverse("audit_stream:retention"),
        reverse("audit_stream:changes"),
    ]


def _actions(endpoint, message):
    return [
        (reverse("audit_stream:replay_message", args=[message.pk]), {}),
        (reverse("audit_stream:replay_dead", args=[endpoint.pk]), {"since": "2000-01-01T00:00"}),
    ]


def _html(response) -> str:
    assert response.status_code == 200, response.status_code
    return response.content.decode()


def _row(html: str, attribute: str) -> str:
    """The <tr> of a table whose row carries ``attribute`` (e.g. 'data-table="x"')."""
    start = html.index(attribute)
    return html[start : html.index("</tr>", start)]


def _change(html: str, pk: int) -> str:
    """The row of one change on the changes page, its nested diff table included."""
    start = html.index(f'data-change="{pk}"')
    end = html.find("data-change=", start + 1)
    return html[start : end if end != -1 else len(html)]


def _older(html: str) -> dict | None:
    """The query of the page's "Older" link, if it has one."""
    match = re.search(r'<a class="button" href="\?([^"]*)">Older', html)
    return {k: v[0] for k, v in parse_qs(unescape(match.group(1))).items()} if match else None


def _figure(fragment: str, name: str) -> str:
    match = re.search(rf'data-figure="{name}">([^<]*)<', fragment)
    assert match, f"no figure {name!r}"
    return match.group(1).strip()


def _metrics(text: str) -> dict:
    """{(name, frozenset(labels)): value} of an exposition text."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


# --------------------------------------------------------------------------- who may see it

KINDS = ["anonymous", "non-staff", "staff without permission", "viewer", "operator", "superuser"]


@pytest.mark.parametrize("kind", KINDS)
def test_permission_matrix(kind, django_user_model, endpoint, message):
    client = Client()
    if kind != "anonymous":
        user = {
            # Has the permission, but is not staff: still refused.
            "non-staff": lambda: _user(django_user_model, "visitor", staff=False, permitted=True),
            "staff without permission": lambda: _user(django_user_model, "clerk", staff=True),
            # May look, not act: view_dashboard alone.
            "viewer": lambda: _user(django_user_model, "viewer", staff=True, permitted=True),
            "operator": lambda: _user(
                django_user_model, "operator", staff=True, permissions=OPERATOR_PERMISSIONS
            ),
            "superuser": lambda: _user(django_user_model, "root", staff=True, superuser=True),
        }[kind]()
        client.force_login(user)

    login = reverse("admin:login")
    metrics = reverse("audit_stream:metrics")
    for url in _pages(endpoint, message):
        response = client.get(url)
        if kind == "anonymous" and url == metrics:  # a scraper gets a status, never a login page
            assert response.status_code == 401, url
            assert response["WWW-Authenticate"].startswith("Bearer"), url
        elif kind == "anonymous":
            assert response.status_code == 302, url
            assert response["Location"] == f"{login}?next={quote(url)}", url
        elif kind in ("non-staff", "staff without permission"):
            assert response.status_code == 403, url
        else:
            assert response.status_code == 200, url

    for url, data in _actions(endpoint, message):
        response = client.post(url, data)
        expected = {"anonymous": 302, "non-staff": 403, "staff without permission": 403, "viewer": 403}
        assert response.status_code == expected.get(kind, 302), url
        if kind == "anonymous":
            assert response["Location"].startswith(f"{login}?next="), url
        assert client.get(url).status_code == 405, url  # actions are POSTs only

    message.refresh_from_db()
    assert message.status == ("pending" if kind in ("operator", "superuser") else "dead")


def test_unknown_endpoints_and_messages_are_404(operator_client):
    missing = "00000000-0000-0000-0000-000000000000"
    for url in (
        reverse("audit_stream:endpoint", args=[999999]),
        reverse("audit_stream:message", args=[missing]),
    ):
        assert operator_client.get(url).status_code == 404, url
    for url in (
        reverse("audit_stream:replay_dead", args=[999999]),
        reverse("audit_stream:replay_message", args=[missing]),
    ):
        assert operator_client.post(url, {"since": "2000-01-01T00:00"}).status_code == 404, url


def test_actions_refuse_a_post_without_the_csrf_token(operator, endpoint, message):
    client = Client(enforce_csrf_checks=True)
    client.force_login(operator)
    for url, data in _actions(endpoint, message):
        assert client.post(url, data).status_code == 403, url
    message.refresh_from_db()
    assert message.status == "dead"

    # With the token from the page's own form, the same POST goes through.
    page = _html(client.get(reverse("audit_stream:message", args=[message.pk])))
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
    url = reverse("audit_stream:replay_message", args=[message.pk])
    assert client.post(url, {"csrfmiddlewaretoken": token}).status_code == 302
    message.refresh_from_db()
    assert message.status == "pending"


def test_metrics_accept_the_bearer_token_when_one_is_set(settings, operator_client):
    url = reverse("audit_stream:metrics")
    anonymous = Client()
    # No token configured: a bearer header counts for nothing.
    assert anonymous.get(url, HTTP_AUTHORIZATION="Bearer anything").status_code == 401

    settings.AUDIT_STREAM = {"METRICS_TOKEN": "t0ken-for-prometheus"}
    response = anonymous.get(url, HTTP_AUTHORIZATION="Bearer t0ken-for-prometheus")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=0.0.4")
    wrong = anonymous.get(url, HTTP_AUTHORIZATION="Bearer t0ken-for-prometheuz")
    assert wrong.status_code == 401 and wrong["WWW-Authenticate"].startswith("Bearer")
    assert anonymous.get(url).status_code == 401  # no header: 401, never the login page
    assert operator_client.get(url).status_code == 200  # a permitted session still works
    # The token opens the metrics only.
    overview = reverse("audit_stream:overview_json")
    assert anonymous.get(overview, HTTP_AUTHORIZATION="Bearer t0ken-for-prometheus").status_code == 302


# --------------------------------------------------------------------------- figures: the stream


@pytest.mark.django_db(transaction=True)
def test_backlog_lag_and_folded_figures_are_exact(operator_client):
    for name in ("a", "b", "c"):
        Product.objects.create(name=name, price=1)
    fold.fold(PRODUCTS)  # 3 folded
    with audit_stream.context(user="ada"):
        for name in ("d", "e", "f"):
            Product.objects.create(name=name, price=2)  # 3 unfolded

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT extract(epoch FROM clock_timestamp() - min(pgh_created_at))::float8"
            " FROM testapp_productevent"
            " WHERE pgh_obj_id IN (SELECT id FROM testapp_product WHERE name >= 'd')"
        )
        expected_lag = cursor.fetchone()[0]

    tables = {t.event_table: t for t in queries.stream_tables()}
    assert (tables[PRODUCTS].backlog, tables[PRODUCTS].folded_total) == (3, 3)
    assert tables[PRODUCTS].lag_seconds == pytest.approx(expected_lag, abs=2)
    assert tables["testapp_orderevent"].backlog == 0  # no order was written
    assert tables["testapp_orderevent"].lag_seconds is None

    html = _html(operator_client.get(reverse("audit_stream:overview")))
    assert '<meta http-equiv="refresh" content="10">' in html
    row = _row(html, f'data-table="{PRODUCTS}"')
    assert (_figure(row, "backlog"), _figure(row, "folded-total")) == ("3", "3")

    data = operator_client.get(reverse("audit_stream:overview_json")).json()
    (table,) = [t for t in data["tables"] if t["event_table"] == PRODUCTS]
    assert (table["backlog"], table["backlog_exact"], table["folded_total"]) == (3, True, 3)
    assert table["model"] == "testapp.product"

    samples = _metrics(operator_client.get(reverse("audit_stream:metrics")).content.decode())
    labels = frozenset({"table": PRODUCTS}.items())
    assert samples[("audit_stream_backlog_events", labels)] == 3
    assert samples[("audit_stream_folded_events_total", labels)] == 3
    assert samples[("audit_stream_lag_seconds", labels)] == pytest.approx(expected_lag, abs=2)

    # Half-way through an interval (a fold stopped by its time budget after one
    # batch), the events it has written are no longer counted.
    result = fold.fold(PRODUCTS, batch_size=2, max_seconds=0)
    assert (result.folded, result.caught_up) == (2, False)
    assert Checkpoint.objects.get(event_table=PRODUCTS).target is not None
    assert {t.event_table: t.backlog for t in queries.stream_tables()}[PRODUCTS] == 1
    fold.fold(PRODUCTS)
    table = {t.event_table: t for t in queries.stream_tables()}[PRODUCTS]
    assert (table.backlog, table.lag_seconds, table.folded_total) == (0, None, 6)


def test_past_its_exact_count_the_backlog_is_estimated_from_the_id_range(operator_client, monkeypatch):
    Product.objects.bulk_create(Product(name=f"p{i}") for i in range(5))
    table = {t.event_table: t for t in queries.stream_tables(exact_up_to=5)}[PRODUCTS]
    assert (table.backlog, table.backlog_exact, table.backlog_display) == (5, True, "5")
    table = {t.event_table: t for t in queries.stream_tables(exact_up_to=3)}[PRODUCTS]
    assert (table.backlog, table.backlog_exact, table.backlog_display) == (5, False, "≈ 5")

    monkeypatch.setattr(dashboard_stream, "BACKLOG_EXACT", 3)
    html = _html(operator_client.get(reverse("audit_stream:overview")))
    assert _figure(_row(html, f'data-table="{PRODUCTS}"'), "backlog") == "≈ 5"
    (data,) = [
        t
        for t in operator_client.get(reverse("audit_stream:overview_json")).json()["tables"]
        if t["event_table"] == PRODUCTS
    ]
    assert (data["backlog"], data["backlog_exact"]) == (5, False)


def _db_now():
    with connection.cursor() as cursor:
        cursor.execute("SELECT now()")  # the test's transaction: the time every query here sees
        return cursor.fetchone()[0]


def test_throughput_chart_and_latency_come_from_fold_runs(operator_client):
    now = _db_now()
    runs = [  # (minutes ago, folded, lag_ms)
        (0, 100, 100),
        (1, 40, 200),
        (1, 60, 300),
        (30, 7, 400),
        (59, 5, 5000),
        (59, 1, None),  # no lag recorded: counted in throughput only
        (60, 999, 99999),  # outside the hour
    ]
    for minutes, folded, lag in runs:
        FoldRun.objects.create(
            event_table=PRODUCTS,
            started_at=now - timedelta(minutes=minutes, seconds=1),
            finished_at=now - timedelta(minutes=minutes),
            folded=folded,
            lag_ms=lag,
        )

    throughput = queries.throughput()
    per_minute = [n for _, n in throughput.minutes]
    assert len(per_minute) == 60
    assert (per_minute[59], per_minute[58], per_minute[29], per_minute[0]) == (100, 100, 7, 6)
    assert (throughput.total, throughput.peak) == (213, 100)
    latency = queries.latency()
    assert (latency.folds, latency.p50, latency.p95, latency.max) == (5, 300, 5000, 5000)

    html = _html(operator_client.get(reverse("audit_stream:overview")))
    svg = html[html.index("<svg") : html.index("</svg>")]
    assert svg.count('<rect class="chart-bar"') == 60
    assert "100 events</title>" in svg and "7 events</title>" in svg
    assert _figure(html, "folded-hour") == "213"
    latency_box = html[html.index('id="latency"') :]
    assert (_figure(latency_box, "p50"), _figure(latency_box, "p95"), _figure(latency_box, "max")) == (
        "300 ms",
        "5.0 s",
        "5.0 s",
    )
    assert _figure(_row(html, f'data-table="{PRODUCTS}"'), "folded-hour") == "213"

    data = operator_client.get(reverse("audit_stream:overview_json")).json()
    assert data["latency"] == {"folds": 5, "p50_ms": 300, "p95_ms": 5000, "max_ms": 5000}
    assert (data["throughput"]["total"], data["throughput"]["peak_per_minute"]) == (213, 100)
    assert [m["folded"] for m in data["throughput"]["per_minute"]] == per_minute


def test_processes_beat_and_retention_runs(settings, operator_client):
    settings.AUDIT_STREAM = {"POLL_INTERVAL": 10}  # a listener is alive if seen within 30 s
    now = _db_now()
    Heartbeat.objects.create(name="listener@h:1", kind="listener", host="h", pid=1, last_seen=now)
    Heartbeat.objects.create(
        name="listener@h:2", kind="listener", host="h", pid=2, last_seen=now - timedelta(seconds=40)
    )
    Heartbeat.objects.create(name="worker@h:3", kind="worker", host="h", pid=3, last_seen=now)
    Heartbeat.objects.create(
        name="worker@h:4", kind="worker", host="h", pid=4, last_seen=now - timedelta(seconds=200)
    )
    Heartbeat.objects.create(
        name="beat@h:5", kind="beat", host="h", pid=5, last_seen=now - timedelta(seconds=20)
    )
    RetentionRun.objects.create(
        trigger="beat", finished_at=now, rows={PRODUCTS: 12}, errors=["testapp_orderevent: boom"]
    )

    alive = {p.pid: p.alive for p in queries.processes()}
    assert alive == {1: True, 2: False, 3: True, 4: False, 5: True}

    data = operator_client.get(reverse("audit_stream:overview_json")).json()
    assert {p["pid"]: p["alive"] for p in data["processes"]} == alive
    assert data["beat"]["alive"] is True
    (run,) = data["beat"]["retention_runs"]
    assert (run["trigger"], run["rows"], run["errors"]) == (
        "beat",
        {PRODUCTS: 12},
        ["testapp_orderevent: boom"],
    )

    html = _html(operator_client.get(reverse("audit_stream:overview")))
    processes = html[html.index('id="processes"') : html.index("</table>", html.index('id="processes"'))]
    assert processes.count("badge ok") == 3 and processes.count("badge bad") == 2
    assert "testapp_orderevent: boom" in html

    samples = _metrics(operator_client.get(reverse("audit_stream:metrics")).content.decode())
    assert samples[("audit_stream_processes_alive", frozenset({"kind": "listener"}.items()))] == 1
    assert samples[("audit_stream_processes_alive", frozenset({"kind": "worker"}.items()))] == 1


def test_processes_of_earlier_runs_age_out_of_the_panel(operator_client):
    """A process silent for over an hour is not shown, and the sweep deletes its row."""
    now = _db_now()
    Heartbeat.objects.create(name="worker@h:1", kind="worker", host="h", pid=1, last_seen=now)
    Heartbeat.objects.create(
        name="worker@h:2", kind="worker", host="h", pid=2, last_seen=now - timedelta(minutes=50)
    )
    Heartbeat.objects.create(
        name="worker@old:3", kind="worker", host="old", pid=3, last_seen=now - timedelta(hours=2)
    )
    assert [p.pid for p in queries.processes()] == [1, 2]  # the silent one of this hour still shows
    data = operator_client.get(reverse("audit_stream:overview_json")).json()
    assert [p["pid"] for p in data["processes"]] == [1, 2]
    assert "worker@old:3" not in _html(operator_client.get(reverse("audit_stream:overview")))
    tasks.sweep()
    assert sorted(Heartbeat.objects.values_list("pid", flat=True)) == [1, 2]


def test_the_oldest_open_transaction_is_shown(operator_client):
    settings_dict = connection.settings_dict
    holder = psycopg.connect(
        dbname=settings_dict["NAME"],
        host=settings_dict["HOST"] or None,
        port=settings_dict["PORT"] or None,
        user=settings_dict["USER"] or None,
        password=settings_dict["PASSWORD"] or None,
        application_name="dashboard-test-holder",
    )
    try:
        html = _html(operator_client.get(reverse("audit_stream:overview")))
        assert 'id="oldest-transaction"' not in html  # open, but without an xid yet

        pid = holder.execute("SELECT pg_backend_pid()").fetchone()[0]
        holder.execute("SELECT pg_current_xact_id()")  # the transaction now holds an xid
        html = _html(operator_client.get(reverse("audit_stream:overview")))
        box = html[html.index('id="oldest-transaction"') :]
        assert _figure(box, "tx-pid") == str(pid)
        assert "dashboard-test-holder" in box
        data = operator_client.get(reverse("audit_stream:overview_json")).json()
        assert data["oldest_transaction"]["pid"] == pid
        assert data["oldest_transaction"]["application_name"] == "dashboard-test-holder"
    finally:
        holder.rollback()
        holder.close()


# --------------------------------------------------------------------------- figures: webhooks


def test_webhook_health_is_exact(operator_client, endpoint):
    quiet = WebhookEndpoint.objects.create(url=PUBLIC_URL + "/quiet", is_active=False)
    quiet.disable("The endpoint answered 410 Gone.")
    now = timezone.now()

    def message_with(status, *attempts):
        found = WebhookMessage.objects.create(endpoint=endpoint, event_type="t", payload={}, status=status)
        for hours_ago, succeeded, error in attempts:
            WebhookAttempt.objects.create(
                message=found,
                attempted_at=now - timedelta(hours=hours_ago),
                succeeded=succeeded,
                status_code=200 if succeeded else 500,
                error=error,
            )
        return found

    message_with("delivered", (1, True, ""))
    message_with("delivered", (3, False, "HTTP 500"), (2, True, ""))
    message_with("dead", (48, False, "too old to count"), (5, False, "HTTP 502"))
    message_with("delivered", (0.5, True, ""))
    for _ in range(3):
        message_with("pending")
    WebhookEndpoint.objects.filter(pk=endpoint.pk).update(consecutive_failures=0)

    health = {h.endpoint.pk: h for h in queries.endpoint_health()}
    ours = health[endpoint.pk]
    assert (ours.attempts_24h, ours.succeeded_24h, ours.success_rate) == (5, 3, 0.6)
    assert (ours.last_error, ours.pending, ours.dead, ours.health) == ("HTTP 500", 3, 1, "degraded")
    assert (health[quiet.pk].success_rate, health[quiet.pk].health) == (None, "disabled")

    html = _html(operator_client.get(reverse("audit_stream:webhooks")))
    row = _row(html, f'data-endpoint="{endpoint.pk}"')
    assert (_figure(row, "success-rate"), _figure(row, "pending"), _figure(row, "dead")) == (
        "60.0%",
        "3",
        "1",
    )
    assert "HTTP 500" in row
    assert "410 Gone" in _row(html, f'data-endpoint="{quiet.pk}"')

    page = _html(operator_client.get(reverse("audit_stream:endpoint", args=[endpoint.pk])))
    assert _figure(page, "success-rate").startswith("60.0%")

    samples = _metrics(operator_client.get(reverse("audit_stream:metrics")).content.decode())
    status = "audit_stream_webhook_messages"
    assert samples[(status, frozenset({"status": "delivered"}.items()))] == 3
    assert samples[(status, frozenset({"status": "pending"}.items()))] == 3
    assert samples[(status, frozenset({"status": "dead"}.items()))] == 1
    assert samples[(status, frozenset({"status": "sending"}.items()))] == 0


# Delivery compares next_attempt_at with the database's now(): see below.
@pytest.mark.django_db(transaction=True)
def test_the_deliveries_counter_never_goes_down_when_retention_prunes_attempts(
    settings, operator_client, httpserver
):
    """audit_stream_webhook_deliveries_total counts attempts ever made, not the rows retention keeps."""
    settings.AUDIT_STREAM = {"WEBHOOK_ALLOWED_NETWORKS": ["127.0.0.0/8"], "WEBHOOK_RETRY_SCHEDULE": [0, 0]}
    answers = iter([Response("no", status=500), Response("ok"), Response("ok")])
    httpserver.expect_request("/hook").respond_with_handler(lambda request: next(answers))
    endpoint = WebhookEndpoint.objects.create(url=httpserver.url_for("/hook"))
    for _ in range(2):
        delivery.send_test(endpoint)
    while WebhookMessage.objects.filter(status="pending").exists():
        delivery.deliver(endpoint.pk)
    name, labels = "audit_stream_webhook_deliveries_total", {"endpoint": str(endpoint.pk)}

    def counted():
        samples = _metrics(operator_client.get(reverse("audit_stream:metrics")).content.decode())
        return tuple(
            samples[(name, frozenset({**labels, "outcome": o}.items()))] for o in ("succeeded", "failed")
        )

    assert counted() == (2, 1)
    WebhookAttempt.objects.update(attempted_at=timezone.now() - timedelta(days=60))
    settings.AUDIT_STREAM = {"RETENTION": {"webhook_attempts": {"max_age": "30d"}}}
    assert retention_module.prune(targets=["webhook_attempts"]).rows["audit_stream_webhookattempt"] == 3
    assert not WebhookAttempt.objects.exists()
    assert counted() == (2, 1)  # a counter never goes down


def test_messages_are_filtered_and_paginated_newest_first(monkeypatch, operator_client, endpoint):
    monkeypatch.setattr(paging, "PAGE_SIZE", 2)
    start = timezone.now() - timedelta(hours=5)
    statuses = ["delivered", "dead", "pending", "delivered", "dead"]
    made = []
    for hour, status in enumerate(statuses):
        made.append(
            WebhookMessage.objects.create(
                endpoint=endpoint,
                event_type="t",
                payload={},
                status=status,
                created_at=start + timedelta(hours=hour),
            )
        )
    newest_first = [m.pk for m in reversed(made)]

    def walk(params):
        url, seen = reverse("audit_stream:endpoint", args=[endpoint.pk]), []
        query = dict(params)
        for _ in range(10):
            html = _html(operator_client.get(url, query))
            seen += re.findall(r'data-message="([^"]+)"', html)
            query = _older(html)
            if query is None:
                return seen
            assert {k: v for k, v in query.items() if k != "before"} == params  # filters are kept
        raise AssertionError("pagination does not end")

    assert walk({}) == [str(pk) for pk in newest_first]
    assert walk({"status": "dead"}) == [str(made[4].pk), str(made[1].pk)]
    since = (start + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S")
    until = (start + timedelta(hours=3, minutes=30)).strftime("%Y-%m-%dT%H:%M:%S")
    assert walk({"since": since, "until": until}) == [str(made[i].pk) for i in (3, 2, 1)]

    page = queries.message_page(endpoint.pk, limit=2)
    assert [m.pk for m in page.items] == newest_first[:2] and page.older
    rest = queries.message_page(endpoint.pk, limit=10, before=page.older)
    assert [m.pk for m in rest.items] == newest_first[2:] and rest.older is None


def test_message_page_shows_the_attempt_log_and_the_payload_exactly(operator_client, endpoint):
    found = WebhookMessage.objects.create(
        endpoint=endpoint, event_type="testapp.product.snapshot", payload={"price": 1}, status="pending"
    )
    with connection.cursor() as cursor:  # stored exactly, as the fold writes it
        cursor.execute(
            'UPDATE audit_stream_webhookmessage SET payload = \'{"diff": {"price": [0.10, 0.30]}}\'::jsonb'
            " WHERE id = %s",
            [found.pk],
        )
    WebhookAttempt.objects.create(message=found, status_code=503, error="HTTP 503", response_excerpt="busy")
    WebhookAttempt.objects.create(message=found, status_code=200, succeeded=True, duration_ms=42)

    html = _html(operator_client.get(reverse("audit_stream:message", args=[found.pk])))
    attempts = html[html.index('id="attempts"') : html.index("</table>", html.index('id="attempts"'))]
    assert attempts.count("<tr>") == 3  # header and two attempts
    assert attempts.index("42 ms") < attempts.index("HTTP 503")  # newest first
    assert "0.10" in html and "0.30" in html


# --------------------------------------------------------------------------- actions


# Delivery compares next_attempt_at with the database's now(): in a test's own
# transaction now() would stay at the test's start, before the replay.
@pytest.mark.django_db(transaction=True)
def test_replay_from_the_page_then_delivery_makes_a_new_attempt(settings, operator_client, httpserver):
    settings.AUDIT_STREAM = {"WEBHOOK_ALLOWED_NETWORKS": ["127.0.0.0/8"]}
    httpserver.expect_request("/hook", method="POST").respond_with_data("ok")
    endpoint = WebhookEndpoint.objects.create(url=httpserver.url_for("/hook"))
    dead = WebhookMessage.objects.create(
        endpoint=endpoint, event_type="audit_stream.test", payload={"n": 1}, status="dead", attempts=8
    )
    WebhookAttempt.objects.create(message=dead, status_code=500, error="HTTP 500")

    page = reverse("audit_stream:endpoint", args=[endpoint.pk])
    response = operator_client.post(
        reverse("audit_stream:replay_message", args=[dead.pk]), {"next": page}, follow=True
    )
    assert response.redirect_chain == [(page, 302)]
    assert f"Replaying {dead.webhook_id}." in response.content.decode()
    dead.refresh_from_db()
    assert (dead.status, dead.attempts) == ("pending", 0)

    delivery.deliver(endpoint.pk)
    dead.refresh_from_db()
    assert dead.status == "delivered"
    assert WebhookAttempt.objects.filter(message=dead, succeeded=True, status_code=200).count() == 1
    assert len(httpserver.log) == 1


def test_replay_dead_since_replays_only_dead_messages_created_since(operator_client, endpoint):
    now = timezone.now()

    def make(status, hours_ago):
        return WebhookMessage.objects.create(
            endpoint=endpoint,
            event_type="t",
            payload={},
            status=status,
            created_at=now - timedelta(hours=hours_ago),
        )

    recent, old, delivered = make("dead", 1), make("dead", 30), make("delivered", 1)
    since = timezone.localtime(now - timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M")
    response = operator_client.post(reverse("audit_stream:replay_dead", args=[endpoint.pk]), {"since": since})
    assert response.status_code == 302
    assert response["Location"] == reverse("audit_stream:endpoint", args=[endpoint.pk])
    statuses = dict(WebhookMessage.objects.values_list("pk", "status"))
    assert (statuses[recent.pk], statuses[old.pk], statuses[delivered.pk]) == ("pending", "dead", "delivered")

    # A bad time replays nothing; an outside "next" is not followed.
    response = operator_client.post(
        reverse("audit_stream:replay_dead", args=[endpoint.pk]),
        {"since": "soon", "next": "https://evil.example/"},
    )
    assert response["Location"] == reverse("audit_stream:endpoint", args=[endpoint.pk])
    assert WebhookMessage.objects.get(pk=old.pk).status == "dead"


# --------------------------------------------------------------------------- retention


def test_retention_page_shows_policies_runs_and_the_next_run(settings, operator_client):
    settings.AUDIT_STREAM = {
        "RETENTION": {"default": {"max_age": "90d"}, "changes": {"max_age": "30d", "keep_last": 1}},
        "RETENTION_INTERVAL": 600,
    }
    started = timezone.now().replace(microsecond=0) - timedelta(minutes=3)
    RetentionRun.objects.create(trigger="command", dry_run=True, rows={PRODUCTS: 99})
    beat = RetentionRun.objects.create(trigger="beat", rows={PRODUCTS: 5, "changes": 2})
    RetentionRun.objects.filter(pk=beat.pk).update(
        started_at=started, finished_at=started + timedelta(seconds=2)
    )

    html = _html(operator_client.get(reverse("audit_stream:retention")))
    policies = html[html.index('id="policies"') : html.index("</table>", html.index('id="policies"'))]
    assert "<code>changes</code>" in policies and "30 d" in policies and "90 d" in policies
    next_run = timezone.localtime(started + timedelta(seconds=600)).strftime("%Y-%m-%d %H:%M:%S")
    assert _figure(html, "next-run").startswith(next_run)
    assert "dry run" in html and "2.0 s" in html

    samples = _metrics(operator_client.get(reverse("audit_stream:metrics")).content.decode())
    pruned = "audit_stream_pruned_rows_total"
    assert samples[(pruned, frozenset({"table": PRODUCTS}.items()))] == 5  # the dry run is not counted
    assert samples[(pruned, frozenset({"table": "changes"}.items()))] == 2


def test_retention_page_without_policies_support(monkeypatch, operator_client):
    monkeypatch.delattr(retention_module, "describe_policies")
    html = _html(operator_client.get(reverse("audit_stream:retention")))
    assert 'id="policies-missing"' in html and "not configured" in html


# --------------------------------------------------------------------------- changes


@pytest.mark.django_db(transaction=True)
def test_change_feed_filters_and_diffs(monkeypatch, operator, operator_client, django_user_model):
    other = django_user_model.objects.create_user("other")
    with audit_stream.context(user=operator.pk, url="/shop/"):
        lamp = Product.objects.create(name="lamp", price="10.00")
        Product.objects.filter(pk=lamp.pk).update(price="12.50")
    with audit_stream.context(user=other.pk):
        chair = Product.objects.create(name="chair", price=3)
    lamp_pk = lamp.pk
    lamp.delete()
    fold.fold_all()
    url = reverse("audit_stream:changes")

    def ids(params):
        return [int(pk) for pk in re.findall(r'data-change="(\d+)"', _html(operator_client.get(url, params)))]

    everything = ids({})
    assert everything == sorted(everything, reverse=True) and len(everything) >= 5
    lamp_changes = ids({"model": "testapp.product", "object_id": str(lamp_pk)})
    assert len(lamp_changes) == 4  # insert, update (snapshot and price_changed), delete
    assert ids({"object_id": str(lamp_pk)}) == lamp_changes
    assert len(ids({"object_id": str(lamp_pk), "label": "before_delete"})) == 1
    by_operator = ids({"user": str(operator.pk)})
    assert len(by_operator) == 3  # the lamp's insert and update (snapshot and price_changed)
    assert ids({"user": operator.username}) == by_operator
    by_other = ids({"user": str(other.pk)})
    assert len(by_other) == 1 and set(by_other).isdisjoint(by_operator)  # the chair's insert
    assert chair.pk and ids({"user": "nobody-at-all"}) == []

    html = _html(
        operator_client.get(url, {"model": "testapp.product", "object_id": str(lamp_pk), "label": "snapshot"})
    )
    update, insert = [int(pk) for pk in re.findall(r'data-change="(\d+)"', html)]
    diff = _change(html, update)
    assert re.search(
        r'<th scope="row">price</th>\s*<td class="old">10.00</td>\s*<td class="new">12.50</td>', diff
    )
    assert "/shop/" in diff  # the context's metadata
    first = _change(html, insert)
    assert re.search(
        r'<th scope="row">name</th>\s*<td class="old"><span class="null">null</span></td>'
        r'\s*<td class="new">lamp</td>',
        first,
    )

    monkeypatch.setattr(paging, "PAGE_SIZE", 2)
    seen, params = [], {}
    while params is not None:
        html = _html(operator_client.get(url, params))
        seen += [int(pk) for pk in re.findall(r'data-change="(\d+)"', html)]
        params = _older(html)
    assert seen == everything


# --------------------------------------------------------------------------- secrets


def test_no_page_or_endpoint_shows_a_secret(settings, operator_client, endpoint, message):
    settings.AUDIT_STREAM = {"METRICS_TOKEN": "t0ken-for-prometheus"}
    old_secret = endpoint.secret
    new_secret = endpoint.rotate_secret()
    WebhookAttempt.objects.create(message=message, status_code=500, error="HTTP 500")
    secrets = [old_secret, new_secret, old_secret.removeprefix("whsec_"), new_secret.removeprefix("whsec_")]

    shown = ""
    for url in _pages(endpoint, message):
        body = _html(operator_client.get(url))
        for secret in secrets:
            assert secret not in body, url
        shown += body
    assert endpoint.masked_secret in shown
    assert "t0ken-for-prometheus" not in shown


def test_the_row_log_is_shown_once_logging_is_on(operator_client):
    from io import StringIO

    from django.core.management import call_command

    from tests.testapp.models import Supplier

    assert "audit_stream_row_log" not in {t.event_table for t in queries.stream_tables()}
    call_command("initlogging", stdout=StringIO())
    try:
        Supplier.objects.create(name="Acme")
        tables = {t.event_table: t for t in queries.stream_tables()}
        assert (tables["audit_stream_row_log"].backlog, tables["audit_stream_row_log"].model) == (
            1,
            "(row log of initlogging)",
        )
        assert "testapp.supplier" in queries.tracked_models()
        assert {"insert", "update", "delete"} <= set(queries.event_labels())
        html = _html(operator_client.get(reverse("audit_stream:overview")))
        assert 'data-table="audit_stream_row_log"' in html
    finally:
        call_command("droplogging", stdout=StringIO())


# --------------------------------------------------------------------------- whose data


def _feed(client, params=None) -> str:
    return _html(client.get(reverse("audit_stream:changes"), params or {}))


def _user_change(password_hash: str) -> Change:
    """A change of auth.user as the row log would fold it, with the password hash in it."""
    return Change.objects.create(
        event_table="audit_stream_row_log", event_id=1, model="auth.user", object_id="1", label="update",
        created_at=timezone.now(), diff={"password": ["old", password_hash]},
        snapshot={"password": password_hash},
    )  # fmt: skip


@pytest.mark.django_db(transaction=True)  # the fold runs outside the test's transaction
def test_the_change_feed_shows_only_models_the_user_may_view(django_user_model):
    """view_dashboard alone shows no model's data; each model's view permission shows that model's."""
    customer = Customer.objects.create(email="c@example.com", name="Ada")
    Order.objects.create(customer=customer)
    Product.objects.create(name="lamp")
    _user_change("pbkdf2_sha256$600000$secret-hash")
    fold.fold_all()
    viewer = Client()
    viewer.force_login(
        _user(django_user_model, "viewer", staff=True, permissions=["audit_stream.view_dashboard"])
    )
    html = _feed(viewer)
    assert "data-change=" not in html and "Only the models you may view are shown" in html
    assert "secret-hash" not in html and "c@example.com" not in html

    products = Client()
    products.force_login(
        _user(
            django_user_model,
            "products",
            staff=True,
            permissions=["audit_stream.view_dashboard", "testapp.view_product"],
        )
    )
    html = _feed(products)
    assert "lamp" in html and "c@example.com" not in html and "secret-hash" not in html
    assert "testapp.order" not in html  # neither in the rows nor among the filter's choices
    asked = _feed(products, {"model": "auth.user"})  # not a choice: the filter is ignored
    assert "secret-hash" not in asked and "auth.user <strong>" not in asked


def test_a_change_permission_also_shows_the_model(django_user_model):
    _user_change("pbkdf2_sha256$600000$secret-hash")
    client = Client()
    client.force_login(
        _user(
            django_user_model,
            "admin2",
            staff=True,
            permissions=["audit_stream.view_dashboard", "auth.change_user"],
        )
    )
    assert "secret-hash" in _feed(client)


def test_the_dashboard_setting_shows_every_model_to_dashboard_viewers(settings, django_user_model):
    settings.AUDIT_STREAM = {"DASHBOARD_SHOWS_ALL_MODELS": True}
    _user_change("pbkdf2_sha256$600000$secret-hash")
    client = Client()
    client.force_login(_user(django_user_model, "viewer", staff=True, permitted=True))
    assert "secret-hash" in _feed(client)


def test_a_message_payload_is_shown_only_to_users_who_may_view_its_model(django_user_model, endpoint):
    found = WebhookMessage.objects.create(
        endpoint=endpoint, event_type="auth.user.update", status="dead",
        payload={"data": {"model": "auth.user", "snapshot": {"password": "pbkdf2-secret-hash"}}},
    )  # fmt: skip
    url = reverse("audit_stream:message", args=[found.pk])
    viewer = Client()
    viewer.force_login(_user(django_user_model, "viewer", staff=True, permitted=True))
    html = _html(viewer.get(url))
    assert "pbkdf2-secret-hash" not in html and "data of auth.user, which you may not view" in html
    assert "Replay" not in html  # and a viewer gets no replay button
    allowed = Client()
    allowed.force_login(
        _user(
            django_user_model,
            "users",
            staff=True,
            permissions=["audit_stream.view_dashboard", "auth.view_user"],
        )
    )
    assert "pbkdf2-secret-hash" in _html(allowed.get(url))


def test_a_logged_table_without_a_model_is_shown_only_with_the_setting_or_to_superusers(
    settings, django_user_model
):
    user = _user(django_user_model, "viewer", staff=True, permitted=True)
    assert not access.may_see_model(user, "public.legacy_table")
    assert access.may_see_model(
        _user(django_user_model, "root", staff=True, superuser=True), "public.legacy_table"
    )
    settings.AUDIT_STREAM = {"DASHBOARD_SHOWS_ALL_MODELS": True}
    assert access.may_see_model(user, "public.legacy_table")
