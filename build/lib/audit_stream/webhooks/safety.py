"""Which webhook URLs may be called: no request forgery into private networks.

Only ``http`` and ``https``. The host must resolve only to public addresses:
private, loopback, link-local (cloud metadata lives there), multicast,
reserved and unspecified addresses are refused, unless they fall in
``AUDIT_STREAM["WEBHOOK_ALLOWED_NETWORKS"]`` (e.g. ``["127.0.0.0/8"]`` for
tests). URLs are checked when an endpoint is saved and again before every
request, and the request goes to the address that was checked, so a DNS
answer that changes in between (rebinding) cannot redirect it.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

from audit_stream import config

__all__ = ["UnsafeURL", "check_url", "resolve"]

# Addresses no public web server has, besides what ipaddress flags below.
_METADATA = {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")}


class UnsafeURL(ValueError):
    """The URL may not be called; the message says why and what to do."""


def _allowed_networks():
    return [ipaddress.ip_network(n, strict=False) for n in config.webhook_allowed_networks()]


def _is_public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return not (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
        or address in _METADATA
        or not address.is_global
    )


def check_address(address: str, host: str) -> None:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if _is_public(ip) or any(ip in network for network in _allowed_networks()):
        return
    raise UnsafeURL(
        f"{host} resolves to {ip}, a private, loopback, link-local or otherwise non-public address."
        " Webhooks may only call public addresses; to allow a private network on purpose, add it to"
        ' AUDIT_STREAM["WEBHOOK_ALLOWED_NETWORKS"].'
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
