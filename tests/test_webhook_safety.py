"""Webhook URLs: refused unless they reach public addresses (or an explicitly allowed network)."""

import pytest
from django.core.exceptions import ValidationError

from audit_stream.webhooks import safety
from audit_stream.webhooks.models import WebhookEndpoint

PUBLIC = "http://93.184.215.14/hook"  # an IP literal: no DNS needed


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://93.184.215.14/x", "must use http or https"),
        ("file:///etc/passwd", "must use http or https"),
        ("javascript:alert(1)", "must use http or https"),
        ("//93.184.215.14/x", "no scheme"),
        ("http://user:pw@93.184.215.14/", "may not contain credentials"),
        ("http://93.184.215.14@127.0.0.1/", "may not contain credentials"),
        ("http://127.0.0.1/", "non-public"),
        ("http://localhost:8000/", "non-public"),
        ("http://10.1.2.3/", "non-public"),
        ("http://172.16.0.1/", "non-public"),
        ("http://192.168.1.1/", "non-public"),
        ("http://169.254.169.254/latest/meta-data/", "non-public"),
        ("http://100.64.0.1/", "non-public"),
        ("http://0.0.0.0/", "non-public"),
        ("http://224.0.0.1/", "non-public"),
        ("http://[::1]/", "non-public"),
        ("http://[fe80::1]/", "non-public"),
        ("http://[fd00:ec2::254]/", "non-public"),
        ("http://[::ffff:127.0.0.1]/", "non-public"),
        ("http://2130706433/", "non-public"),  # 127.0.0.1 as a decimal
        ("http://0x7f000001/", "non-public"),  # as hex
        ("http://0177.0.0.1/", "non-public"),  # as octal
        ("http://127.1/", "non-public"),  # short form
        ("http://93.184.215.14:99999/", "invalid port"),
        ("http:///path", "no host"),
        ("http://no-such-host.invalid/", "does not resolve"),
    ],
)
def test_unsafe_urls_are_refused(url, reason):
    with pytest.raises(safety.UnsafeURL, match=reason):
        safety.check_url(url)


@pytest.mark.parametrize(
    "url", [PUBLIC, "https://93.184.215.14:8443/a?b=c", "http://[2606:4700:4700::1111]/"]
)
def test_public_urls_are_accepted(url):
    safety.check_url(url)


def test_an_allowed_network_is_accepted(settings):
    settings.AUDIT_STREAM = {"WEBHOOK_ALLOWED_NETWORKS": ["127.0.0.0/8"]}
    safety.check_url("http://127.0.0.1:9/hook")
    with pytest.raises(safety.UnsafeURL):
        safety.check_url("http://10.0.0.1/hook")


@pytest.mark.django_db
def test_an_endpoint_with_an_unsafe_url_is_not_saved():
    with pytest.raises(ValidationError, match="non-public"):
        WebhookEndpoint.objects.create(url="http://169.254.169.254/")
    assert not WebhookEndpoint.objects.exists()


@pytest.mark.django_db
def test_an_endpoint_gets_a_secret_shown_masked():
    endpoint = WebhookEndpoint.objects.create(url=PUBLIC)
    assert endpoint.secret.startswith("whsec_") and len(endpoint.secret) > 40
    assert endpoint.masked_secret == "whsec_…" + endpoint.secret[-4:]
    assert endpoint.secret not in str(endpoint) + repr(endpoint)
