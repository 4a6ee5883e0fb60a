"""Settings: one ``AUDIT_STREAM`` dict, read through one small function per key.

Every key has a default; the docstrings below are the settings reference
(mirrored in the README). Unknown keys and values of the wrong type are
reported by the system checks (``audit_stream.E010``...).
"""

from __future__ import annotations

from typing import Any

from django.conf import settings

#: Keys of ``settings.AUDIT_STREAM`` and the type each value must have.
KEYS: dict[str, tuple[type, ...]] = {
    "APPEND_ONLY": (bool,),
    "MIDDLEWARE_METHODS": (list, tuple),
    "JSON_ENCODER": (str, type),
}


def _get(key: str, default: Any) -> Any:
    return getattr(settings, "AUDIT_STREAM", {}).get(key, default)


def append_only() -> bool:
    """``APPEND_ONLY`` (default ``True``): install the trigger that refuses
    UPDATE and DELETE on event tables. Only retention may delete, deliberately."""
    return _get("APPEND_ONLY", True)


def middleware_methods() -> tuple[str, ...]:
    """``MIDDLEWARE_METHODS`` (default ``("POST", "PUT", "PATCH", "DELETE")``):
    the HTTP methods for which :class:`~audit_stream.middleware.HistoryMiddleware`
    opens a context."""
    return tuple(m.upper() for m in _get("MIDDLEWARE_METHODS", ("POST", "PUT", "PATCH", "DELETE")))


def json_encoder() -> type:
    """``JSON_ENCODER`` (default ``django.core.serializers.json.DjangoJSONEncoder``):
    the encoder for context metadata (a class or its dotted path)."""
    from django.utils.module_loading import import_string

    value = _get("JSON_ENCODER", "django.core.serializers.json.DjangoJSONEncoder")
    return import_string(value) if isinstance(value, str) else value
