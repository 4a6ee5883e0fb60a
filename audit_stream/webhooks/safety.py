"""Which webhook URLs may be called: no request forgery into private networks.

Only ``http`` and ``https``. The host must resolve only to public addresses:
private, loopback, link-local (cloud metadata lives there), multicast,
reserved and unspecified addresses, every special-purpose network IANA lists
as not globally reachable (written out here, whatever the Python version's
``ipaddress`` says), and IPv6 addresses wrapping such an IPv4 address
(IPv4-mapped, 6to4, NAT64) are refused, unless they fall in
``AUDIT_STREAM["WEBHOOK_ALLOWED_NETWORKS"]`` (e.g. ``["127.0.0.0/8"]`` for
tests). URLs are checked when an endpoint's URL is set or changed, and again before every
request, and the request goes to the address that was checked, so a DNS
answer that changes in between (rebinding) cannot redirect it.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

from audit_stream import config

__all__ = ["UnsafeURL", "check_url", "non_public", "resolve"]

# Networks no public web server is in, written out from IANA's special-purpose
# address registries, so the guard does not depend on the ``ipaddress`` tables
# of the running Python (which differ between versions: 3.11 calls 192.0.0.9
# global). Checked first; ``ipaddress``'s own flags are checked as well.
_NON_PUBLIC = {
    ipaddress.ip_network(network): name
    for network, name in [
        ("0.0.0.0/8", "this network"),
        ("10.0.0.0/8", "private"),
        ("100.64.0.0/10", "shared address space (carrier-grade NAT)"),
        ("127.0.0.0/8", "loopback"),
        ("169.254.0.0/16", "link-local (cloud metadata)"),
        ("172.16.0.0/12", "private"),
        ("192.0.0.0/24", "IETF protocol assignments"),
        ("192.0.2.0/24", "documentation"),
        ("192.88.99.0/24", "6to4 relay anycast"),
        ("192.168.0.0/16", "private"),
        ("198.18.0.0/15", "benchmarking"),
        ("198.51.100.0/24", "documentation"),
        ("203.0.113.0/24", "documentation"),
        ("224.0.0.0/4", "multicast"),
        ("240.0.0.0/4", "reserved"),  # and the broadcast address
        ("64:ff9b:1::/48", "local-use IPv4/IPv6 translation"),
        ("::/8", "loopback, unspecified or IPv4-compatible"),
        ("100::/64", "discard-only"),
        ("2001::/23", "IETF protocol assignments (Teredo among them)"),
        ("2001:db8::/32", "documentation"),
        ("3fff::/20", "documentation"),
        ("5f00::/16", "segment routing"),
        ("fc00::/7", "unique local (private)"),
        ("fe80::/10", "link-local"),
        ("fec0::/10", "site-local"),
        ("ff00::/8", "multicast"),
    ]
}
_METADATA = {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")}
_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # the well-known prefix: the last 32 bits are IPv4


class UnsafeURL(ValueError):
    """The URL may not be called; the message says why and what to do."""


def _allowed_networks():
    return [ipaddress.ip_network(n, strict=False) for n in config.webhook_allowed_networks()]


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries and reaches: IPv4-mapped, 6to4 or NAT64."""
    if address.ipv4_mapped:
        return address.ipv4_mapped
    if address.sixtofour:
        return address.sixtofour
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def non_public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why ``address`` is not public (e.g. ``"192.0.0.0/24, IETF protocol assignments"``); ``None``: public.

    An IPv6 address that wraps an IPv4 one (``::ffff:a.b.c.d``, 6to4 ``2002:…``,
    NAT64 ``64:ff9b::…``) is judged by the IPv4 address it reaches.
    """
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            reason = non_public(embedded)
            return f"wraps {embedded}: {reason}" if reason else None
    for network, name in _NON_PUBLIC.items():
        if address in network:
            return f"{network}, {name}"
    if address in _METADATA:
        return "cloud metadata"
    if (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
        or not address.is_global
    ):
        return "not global"
    return None


def check_address(address: str, host: str) -> None:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if any(ip in network for network in _allowed_networks()):
        return
    reason = non_public(ip)
    if reason is None:
        return
    raise UnsafeURL(
        f"{host} resolves to {ip} ({reason}), a private, loopback, link-local or otherwise non-public"
        " address. Webhooks may only call public addresses; to allow a private network on purpose, add"
        ' it to AUDIT_STREAM["WEBHOOK_ALLOWED_NETWORKS"].'
    )


def resolve(url: str) -> tuple[str, int, str]:
    """Check ``url`` and return (host, port, the address to connect to)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise UnsafeURL(f"Webhook URLs must use http or https, not {parts.scheme or 'no scheme'!r}.")
    if parts.username is not None or parts.password is not None:
        raise UnsafeURL(
            "Webhook URLs may not contain credentials (user:password@); use the signature instead."
        )
    host = parts.hostname
    if not host:
        raise UnsafeURL("The webhook URL has no host.")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise UnsafeURL("The webhook URL has an invalid port.") from None
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise UnsafeURL(f"The webhook host {host!r} does not resolve ({exc}).") from None
    addresses = list(dict.fromkeys(info[4][0] for info in infos))
    for address in addresses:  # every answer must be safe, not just the first
        check_address(address, host)
    return host, port, addresses[0]


def check_url(url: str) -> None:
    """Raise :class:`UnsafeURL` unless ``url`` may be called."""
    resolve(url)
