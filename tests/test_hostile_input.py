"""Property-based tests (hypothesis): hostile input is stored exactly or refused clearly."""

import ipaddress
import json
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import transaction
from django.db.models import TextField
from django.db.models.functions import Cast
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import audit_stream
from audit_stream import retention
from audit_stream.models import Context
from audit_stream.webhooks import safety
from tests.testapp.models import Product

# JSON values PostgreSQL's jsonb can hold: no NUL in strings, finite numbers.
_text = st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"), max_size=200)
_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**15), 10**15) | _text
    | st.floats(allow_nan=False, allow_infinity=False, width=32),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(_text, children, max_size=5),
    max_leaves=20,
)  # fmt: skip


def _exact(text):
    return json.loads(text, parse_float=Decimal, parse_int=Decimal)


@pytest.mark.django_db
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=_text.filter(bool), value=_json)
def test_any_json_metadata_is_stored_exactly(key, value):
    with transaction.atomic():
        with audit_stream.context(**{key: value}) as ctx:
            Product.objects.create(name="p")
        stored = Context.objects.filter(pk=ctx.id).values_list(Cast("metadata", TextField()), flat=True).get()
        transaction.set_rollback(True)
    # Compared as JSON numbers (decimals): jsonb keeps the number that was sent, and
    # may print 2.280870085079859e+16 as 22808700850798590.
    assert _exact(stored) == _exact(json.dumps({key: value}))


@pytest.mark.django_db
@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(size=st.integers(100_000, 300_000))
def test_huge_values_are_stored_exactly(size):
    value = "x" * size
    with transaction.atomic():
        with audit_stream.context(big=value) as ctx:
            Product.objects.create(name="p")
        assert Context.objects.get(pk=ctx.id).metadata == {"big": value}
        transaction.set_rollback(True)


@given(st.text(max_size=20).map(lambda s: s + "\x00"))
def test_nul_characters_are_refused_before_any_sql(value):
    with pytest.raises(ValueError, match="NUL character"):
        audit_stream.context(note=value)


@given(st.sampled_from([float("nan"), float("inf"), float("-inf")]))
def test_nan_and_infinity_are_refused(value):
    with pytest.raises(TypeError, match="'x'"):
        audit_stream.context(x=value)


# -- webhook URLs ----------------------------------------------------------------------------------

_private_v4 = st.one_of(
    st.ip_addresses(v=4, network="127.0.0.0/8"),
    st.ip_addresses(v=4, network="10.0.0.0/8"),
    st.ip_addresses(v=4, network="172.16.0.0/12"),
    st.ip_addresses(v=4, network="192.168.0.0/16"),
    st.ip_addresses(v=4, network="169.254.0.0/16"),
    st.ip_addresses(v=4, network="100.64.0.0/10"),
    st.ip_addresses(v=4, network="224.0.0.0/4"),
    st.ip_addresses(v=4, network="0.0.0.0/8"),
)


def _spellings(ip: ipaddress.IPv4Address) -> list[str]:
    """Ways to write one IPv4 address in a URL host that resolvers accept."""
    n = int(ip)
    octets = str(ip).split(".")
    return [
        str(ip),
        str(n),  # decimal
        hex(n),  # hex
        ".".join("0" + oct(int(o))[2:] for o in octets),  # octal octets
        f"[::ffff:{ip}]",  # IPv4-mapped IPv6
    ]


@settings(max_examples=150, deadline=None)
@given(ip=_private_v4, form=st.integers(0, 4), scheme=st.sampled_from(["http", "https"]))
def test_private_addresses_are_refused_in_every_spelling(ip, form, scheme):
    host = _spellings(ip)[form]
    with pytest.raises(safety.UnsafeURL):
        safety.check_url(f"{scheme}://{host}/hook")


# Special-purpose networks that some Python versions' tables call global, but the guard refuses.
_SPECIAL_V4 = [ipaddress.ip_network(n) for n in ("192.0.0.0/24", "192.88.99.0/24", "198.18.0.0/15")]


@settings(max_examples=100, deadline=None)
@given(
    ip=st.ip_addresses(v=4).filter(
        lambda ip: ip.is_global and not ip.is_multicast and not any(ip in n for n in _SPECIAL_V4)
    )
)
def test_public_addresses_are_accepted(ip):
    safety.check_url(f"https://{ip}/hook")


@settings(max_examples=100, deadline=None)
@given(ip=st.ip_addresses(v=6).filter(lambda ip: not ip.is_global or ip.ipv4_mapped is not None))
def test_non_global_ipv6_is_refused(ip):
    if ip.ipv4_mapped is not None and ip.ipv4_mapped.is_global:
        return  # a mapped public IPv4 address is public
    with pytest.raises(safety.UnsafeURL):
        safety.check_url(f"http://[{ip}]/hook")


@given(
    userinfo=st.text(st.characters(whitelist_categories=["L", "N"]), min_size=1, max_size=10),
    host=st.sampled_from(["93.184.215.14", "127.0.0.1", "example.com"]),
)
def test_urls_with_credentials_are_refused(userinfo, host):
    with pytest.raises(safety.UnsafeURL, match="credentials"):
        safety.check_url(f"https://{userinfo}@{host}/hook")


@given(scheme=st.text(st.characters(whitelist_categories=["Ll"]), min_size=1, max_size=8))
def test_only_http_and_https_schemes_are_accepted(scheme):
    url = f"{scheme}://93.184.215.14/hook"
    if scheme in ("http", "https"):
        safety.check_url(url)
    else:
        with pytest.raises(safety.UnsafeURL):
            safety.check_url(url)


_FULLWIDTH_LOCALHOST = "".join(chr(0xFF00 + ord(c) - 0x20) for c in "localhost")


@pytest.mark.parametrize("host", [_FULLWIDTH_LOCALHOST, "LOCALHOST", "localhost.", "xn--"])
def test_idn_and_odd_spellings_of_local_hosts_are_refused(host):
    """Fullwidth and enclosed letters normalise (IDNA) to "localhost": still refused."""
    with pytest.raises(safety.UnsafeURL):
        safety.check_url(f"https://{host}/hook")


# -- retention arguments ---------------------------------------------------------------------------


@given(st.text(max_size=12))
def test_durations_parse_or_fail_clearly(text):
    try:
        parsed = retention.parse_duration(text)
    except ValueError as exc:
        assert "is not a duration" in str(exc)
    else:
        assert parsed > timedelta(0)


@given(st.integers(1, 10**6), st.sampled_from("smhdw"))
def test_valid_durations_parse(number, unit):
    seconds = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[unit]
    assert retention.parse_duration(f"{number}{unit}") == timedelta(seconds=number * seconds)


@given(st.one_of(st.integers(-5, 0), st.text(max_size=5), st.floats(allow_nan=False), st.booleans()))
def test_keep_last_must_be_a_positive_integer(value):
    with pytest.raises(ValueError, match="keep_last"):
        retention.Policy.parse({"keep_last": value}, "policy")
