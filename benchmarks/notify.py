"""audit_stream's NOTIFY wake-up, as seen by the write path.

No stream worker runs during the benchmark. Before each run of an
audit_stream variant, the harness does what the worker's fold does when it
has caught up: if ``AUDIT_STREAM["NOTIFY"]`` is on (as overridden by the
variant), it arms the wake-up flag (``audit_stream.stream.wakeup.arm()``), so
the run's first statement takes it and sends one NOTIFY, while every
statement checks it. With NOTIFY off the flag is never armed.

The benchmark's own session LISTENs on the channel and counts the
notifications each run sends: one per run with NOTIFY on, none with it off.
If this audit_stream has no NOTIFY (no ``audit_stream.stream.wakeup``),
everything here does nothing.
"""

from __future__ import annotations

import contextlib

from django.conf import settings
from django.db import connection
from django.test.utils import override_settings

from benchmarks import db
from benchmarks.variants import AUDIT_STREAM, Variant

_received: list[str] = []


def supported() -> bool:
    """Whether this audit_stream has the NOTIFY wake-up."""
    try:
        from audit_stream.stream import wakeup  # noqa: F401
    except ImportError:
        return False
    return True


def applies(variant: Variant) -> bool:
    """Whether the variant's runs go through the wake-up flag."""
    return variant.family == AUDIT_STREAM and supported()


def variant_settings(variant: Variant) -> contextlib.AbstractContextManager:
    """``AUDIT_STREAM`` with the variant's overrides (e.g. ``{"NOTIFY": False}``)."""
    if not variant.settings:
        return contextlib.nullcontext()
    return override_settings(AUDIT_STREAM={**getattr(settings, "AUDIT_STREAM", {}), **variant.settings})


def notify_on(variant: Variant) -> bool:
    """Whether NOTIFY is on for the variant (``audit_stream.config.notify()`` under its settings)."""
    if not applies(variant):
        return False
    from audit_stream import config

    with variant_settings(variant):
        return config.notify()


def listen() -> None:
    """LISTEN on the channel on the benchmark's connection, counting what arrives."""
    if not supported():
        return
    from audit_stream import config

    connection.ensure_connection()
    connection.connection.add_notify_handler(lambda n: _received.append(n.payload))
    db.execute(f"LISTEN {connection.ops.quote_name(config.channel())}")


def arm(variant: Variant) -> None:
    """Disarm the wake-up flag, then arm it as a caught-up worker would (if NOTIFY is on)."""
    if not applies(variant):
        return
    from audit_stream.stream import wakeup

    wakeup.disarm()
    if notify_on(variant):
        wakeup.arm()
    _received.clear()


def expected(variant: Variant) -> int:
    """Notifications a run of the variant must send."""
    return 1 if notify_on(variant) else 0


def received(variant: Variant) -> int:
    """Notifications received since :func:`arm` for the variant's event table."""
    db.execute("SELECT 1")  # let the connection read any pending notification
    table = variant.event_model._meta.db_table if variant.event_model else None
    return sum(1 for payload in _received if payload == table)
