"""The dashboard in a real browser: headless Chromium (Debian's) driven by Playwright.

Logs in through the admin's login page, opens every page, replays a message
with its button, and saves one screenshot per page to artifacts/screenshots/.
"""

import os
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

import audit_stream
from audit_stream.models import FoldRun, Heartbeat, RetentionRun
from audit_stream.stream import fold
from audit_stream.webhooks.models import WebhookAttempt, WebhookEndpoint, WebhookMessage
from tests.testapp.models import Product

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = Path(__file__).resolve().parent.parent / "artifacts" / "screenshots"
PASSWORD = "a-long-test-password"

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def chromium():
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    return sync_api


def _populate():
    """A small but lively database: folded and waiting events, fold runs, processes, webhooks."""
    with audit_stream.context(user=1, url="/admin/testapp/product/add/"):
        products = [Product.objects.create(name=f"lamp {i}", price=10 + i, stock=i) for i in range(6)]
    Product.objects.filter(pk=products[0].pk).update(price=12.5)
    fold.fold_all()
    for product in products[3:]:
        Product.objects.filter(pk=product.pk).update(stock=99)  # left unfolded: a backlog

    now = timezone.now()
    for minutes in range(0, 60, 3):
        FoldRun.objects.create(
            event_table="testapp_productevent",
            started_at=now - timedelta(minutes=minutes, seconds=2),
            finished_at=now - timedelta(minutes=minutes),
            folded=200 + (minutes * 37) % 900,
            lag_ms=120 + minutes * 11,
        )
    for kind, pid, age in (
        ("listener", 101, 0),
        ("worker", 102, 5),
        ("worker", 103, 400),
        ("beat", 104, 12),
    ):
        Heartbeat.objects.create(
            name=f"{kind}@web-1:{pid}",
            kind=kind,
            host="web-1",
            pid=pid,
            last_seen=now - timedelta(seconds=age),
        )
    RetentionRun.objects.create(
        trigger="beat", finished_at=now, rows={"testapp_productevent": 1200, "changes": 40}, errors=[]
    )

    endpoint = WebhookEndpoint.objects.create(url="http://93.184.215.14/hooks/audit", description="CRM sync")
    WebhookEndpoint.objects.create(url="http://93.184.215.15/hooks/old", description="legacy").disable(
        "The endpoint answered 410 Gone."
    )
    dead = None
    for index, status in enumerate(["delivered"] * 6 + ["pending", "dead", "dead"]):
        message = WebhookMessage.objects.create(
            endpoint=endpoint,
            event_type="testapp.product.snapshot",
            payload={"type": "testapp.product.snapshot", "data": {"object_id": str(index)}},
            status=status,
            attempts=8 if status == "dead" else 1,
            last_error="HTTP 503" if status == "dead" else "",
        )
        WebhookAttempt.objects.create(
            message=message,
            succeeded=status == "delivered",
            status_code=200 if status == "delivered" else 503,
            duration_ms=35 + index,
            error="" if status == "delivered" else "HTTP 503",
            response_excerpt="ok" if status == "delivered" else "upstream unavailable",
        )
        dead = message if status == "dead" else dead
    return endpoint, dead


def test_every_page_in_a_browser(chromium, live_server, django_user_model):
    django_user_model.objects.create_superuser("admin", "admin@example.com", PASSWORD)
    endpoint, dead = _populate()
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    base = live_server.url

    # No ORM below until the browser is closed: Playwright's sync API runs an
    # event loop in this thread, where Django refuses synchronous queries.
    with chromium.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            page.set_default_timeout(15_000)

            def shoot(name):
                page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)

            # Anonymous: sent to the admin's login page, then back.
            page.goto(f"{base}/audit-stream/")
            assert "/admin/login/" in page.url and "next=/audit-stream/" in page.url
            page.fill("#id_username", "admin")
            page.fill("#id_password", PASSWORD)
            page.click("input[type=submit]")
            page.wait_for_url(f"{base}/audit-stream/")
            assert page.inner_text("h1") == "Stream overview"
            # The stylesheet loaded (no network beyond the live server is needed).
            assert page.eval_on_selector(".topbar", "el => getComputedStyle(el).display") == "flex"
            row = page.locator('tr[data-table="testapp_productevent"]')
            assert row.locator('[data-figure="backlog"]').inner_text() == "3"
            assert page.locator("svg.chart rect.chart-bar").count() == 60
            shoot("overview")

            page.click("nav.nav >> text=Webhooks")
            assert page.inner_text("h1") == "Webhooks"
            assert page.locator(
                f'tr[data-endpoint="{endpoint.pk}"] [data-figure="success-rate"]'
            ).inner_text()
            shoot("webhooks")

            page.click(f'tr[data-endpoint="{endpoint.pk}"] a')
            assert page.inner_text("h1") == endpoint.url
            assert page.locator("#messages tbody tr").count() == 9
            shoot("endpoint")

            page.select_option("#id_status", "dead")
            page.click("form.filters button")
            assert page.locator("#messages tbody tr").count() == 2

            page.click(f'tr[data-message="{dead.pk}"] a')
            assert page.inner_text("h1") == dead.webhook_id
            shoot("message")
            page.click("form.inline button")  # Replay
            page.wait_for_selector("ul.messages")
            assert f"Replaying {dead.webhook_id}." in page.inner_text("ul.messages")
            assert page.inner_text(".page-head .badge") == "pending"
            shoot("message-replayed")

            page.click("nav.nav >> text=Retention")
            assert page.inner_text("h1") == "Retention"
            shoot("retention")

            page.click("nav.nav >> text=Changes")
            assert page.inner_text("h1") == "Changes"
            assert page.locator("table.diff").count() >= 6
            shoot("changes")

            page.select_option("#id_label", "price_changed")
            page.click("form.filters button")
            assert page.locator("#changes > tbody > tr").count() == 1
        finally:
            browser.close()

    dead.refresh_from_db()
    assert (dead.status, dead.attempts) == ("pending", 0)
    for name in ("overview", "webhooks", "endpoint", "message", "retention", "changes"):
        assert (SCREENSHOTS / f"{name}.png").stat().st_size > 10_000, name
