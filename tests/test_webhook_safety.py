"""Webhook URLs: refused unless they reach public addresses (or an explicitly allowed network)."""

import ipaddress
import re

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


# Addresses that some Python versions' ipaddress tables call global, or that wrap one that is not.
WRAPPED_OR_SPECIAL = [
    ("2002:7f00:1::", "wraps 127.0.0.1"),  # 6to4 of loopback
    ("2002:a9fe:a9fe::1", "wraps 169.254.169.254"),  # 6to4 of the metadata service
    ("2002:a00:1::1", "wraps 10.0.0.1"),
    ("2002:c0a8:101::", "wraps 192.168.1.1"),
    ("64:ff9b::7f00:1", "wraps 127.0.0.1"),  # NAT64 of loopback
    ("64:ff9b::a9fe:a9fe", "wraps 169.254.169.254"),
    ("::ffff:10.0.0.1", "wraps 10.0.0.1"),
    ("192.0.0.9", "192.0.0.0/24"),  # global per Python 3.11's tables
    ("192.0.0.10", "192.0.0.0/24"),
    ("192.0.0.170", "192.0.0.0/24"),
    ("192.0.0.255", "192.0.0.0/24"),
    ("198.18.0.1", "198.18.0.0/15"),
    ("192.88.99.1", "192.88.99.0/24"),
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "2001::/23"),  # Teredo
    ("64:ff9b:1::1", "64:ff9b:1::/48"),
    ("::7f00:1", "::/8"),  # IPv4-compatible loopback
    ("fec0::1", "fec0::/10"),
    ("2001:db8::1", "2001:db8::/32"),
]


@pytest.mark.parametrize(("address", "reason"), WRAPPED_OR_SPECIAL)
def test_6to4_nat64_and_special_purpose_addresses_are_refused(address, reason):
    """Each is refused, with the network that refuses it named."""
    host = f"[{address}]" if ":" in address else address
    with pytest.raises(safety.UnsafeURL, match=re.escape(reason)):
        safety.check_url(f"http://{host}/hook")


@pytest.mark.parametrize(("address", "reason"), WRAPPED_OR_SPECIAL)
def test_the_refusal_does_not_depend_on_pythons_ipaddress_tables(address, reason, monkeypatch):
    """Even if ipaddress called every address global and public, the written-out table refuses these."""
    for cls in (ipaddress.IPv4Address, ipaddress.IPv6Address):
        for flag in ("is_private", "is_loopback", "is_link_local", "is_multicast", "is_reserved",
                     "is_unspecified", "is_site_local"):  # fmt: skip
            if hasattr(cls, flag):
                monkeypatch.setattr(cls, flag, property(lambda self: False))
        monkeypatch.setattr(cls, "is_global", property(lambda self: True))
    assert reason in (safety.non_public(ipaddress.ip_address(address)) or "public")


@pytest.mark.parametrize(
    "address",
    ["2002:5db8:d70e::1", "64:ff9b::5db8:d70e", "::ffff:93.184.215.14"],  # each wraps 93.184.215.14
)
def test_an_ipv6_address_wrapping_a_public_ipv4_address_is_accepted(address):
    safety.check_url(f"http://[{address}]/hook")


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
