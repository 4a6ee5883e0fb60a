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
    "NOTIFY": (bool,),
    "CHANNEL": (str,),
    "POLL_INTERVAL": (int, float),
    "FOLD_BATCH_SIZE": (int,),
    "FOLD_LINGER": (int, float),
    "FOLD_LANES": (dict,),
    "REDIS_URL": (str,),
    "LISTEN_DATABASE": (str,),
    "WEBHOOK_RETRY_SCHEDULE": (list, tuple),
    "SINK_RETRY_SCHEDULE": (list, tuple),
    "WEBHOOK_TIMEOUT": (int, float, list, tuple),
    "WEBHOOK_ALLOWED_NETWORKS": (list, tuple),
    "WEBHOOK_DISABLE_AFTER": (int, float),
    "RETENTION": (dict,),
    "RETENTION_INTERVAL": (int, float),
    "PARTITIONS": (dict,),
    "METRICS_TOKEN": (str,),
    "DASHBOARD_SHOWS_ALL_MODELS": (bool,),
    "MIDDLEWARE_METHODS": (list, tuple),
    "JSON_ENCODER": (str, type),
    "IGNORE_TABLES": (list, tuple),
    "SCHEMA": (str,),
    "MASK": (dict,),
    "MASK_KEY": (str,),
}


def _get(key: str, default: Any) -> Any:
    return getattr(settings, "AUDIT_STREAM", {}).get(key, default)


def append_only() -> bool:
    """``APPEND_ONLY`` (default ``True``): install the trigger that refuses
    UPDATE and DELETE on the event tables of your apps (run ``makemigrations``
    after changing it). Only retention may delete, deliberately. audit_stream's
    own row log and DDL log stay append-only either way."""
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


def notify() -> bool:
    """``NOTIFY`` (default ``True``): wake the worker with ``pg_notify`` when it is
    idle. ``False`` is poll-only mode: writers never notify, and the listener
    polls every ``POLL_INTERVAL``. Takes effect without a migration."""
    return _get("NOTIFY", True)


def channel() -> str:
    """``CHANNEL`` (default ``"audit_stream"``): the LISTEN/NOTIFY channel."""
    return _get("CHANNEL", "audit_stream")


def poll_interval() -> float:
    """``POLL_INTERVAL`` (default ``1.0`` seconds): how often the listener looks
    for work without being notified; the most a missed notification can cost."""
    return float(_get("POLL_INTERVAL", 1.0))


def fold_batch_size() -> int:
    """``FOLD_BATCH_SIZE`` (default ``5000``): events folded per transaction."""
    return _get("FOLD_BATCH_SIZE", 5000)


def fold_linger() -> float:
    """``FOLD_LINGER`` (default ``0.1`` seconds): how long a caught-up fold keeps
    looking for new events (every 5 ms) before it goes idle and asks writers to
    NOTIFY it. Under steady writes, the fold never goes idle and writers never pay
    NOTIFY's commit lock; ``0`` re-arms after every batch."""
    return float(_get("FOLD_LINGER", 0.1))


def fold_lanes() -> dict:
    """``FOLD_LANES`` (default ``{}``: one lane each): how many lanes, and so how many
    workers at once, fold each event table, per event model label and ``"default"``,
    e.g. ``{"shop.OrderEvent": 4, "default": 1}`` (1 to 64). Objects are split by a hash
    of their id; each object's changes stay in order. Changing a number re-lanes the
    table at its next fold, exactly. See :mod:`audit_stream.stream.lanes`."""
    return _get("FOLD_LANES", {})


def redis_url() -> str:
    """``REDIS_URL`` (default: ``CELERY_BROKER_URL``, else ``$REDIS_URL``, else
    ``redis://127.0.0.1:6379/0``): where the listener keeps one pending fold per table."""
    import os

    return (
        _get("REDIS_URL", None)
        or getattr(settings, "CELERY_BROKER_URL", None)
        or os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    )


def listen_database() -> str:
    """``LISTEN_DATABASE`` (default ``"default"``): the database alias the listener
    connects to. LISTEN needs a session: point it at a direct connection, never at
    a pooler in transaction mode."""
    return _get("LISTEN_DATABASE", "default")


#: Seconds before each attempt: immediately, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h.
DEFAULT_RETRY_SCHEDULE = (0, 5, 300, 1800, 7200, 18000, 36000, 36000)


def webhook_retry_schedule() -> tuple[float, ...]:
    """``WEBHOOK_RETRY_SCHEDULE`` (default immediately, 5 s, 5 min, 30 min, 2 h, 5 h,
    10 h, 10 h): seconds to wait before each attempt, ±10% jitter. After the last
    one fails, the message is dead (and can be replayed)."""
    return tuple(_get("WEBHOOK_RETRY_SCHEDULE", DEFAULT_RETRY_SCHEDULE))


def sink_retry_schedule() -> tuple[float, ...]:
    """``SINK_RETRY_SCHEDULE`` (default: the webhook default): seconds to wait before
    each publish attempt to a sink, ±10% jitter; after the last, the message is dead."""
    return tuple(_get("SINK_RETRY_SCHEDULE", DEFAULT_RETRY_SCHEDULE))


def webhook_timeouts() -> tuple[float, float]:
    """``WEBHOOK_TIMEOUT`` (default ``(5, 10)``): connect and read timeouts in
    seconds (one number sets both)."""
    value = _get("WEBHOOK_TIMEOUT", (5.0, 10.0))
    if isinstance(value, (int, float)):
        return float(value), float(value)
    return float(value[0]), float(value[1])


def webhook_allowed_networks() -> tuple[str, ...]:
    """``WEBHOOK_ALLOWED_NETWORKS`` (default none): private networks webhooks may
    call anyway, e.g. ``["10.0.0.0/8"]``. Public addresses are always allowed."""
    return tuple(_get("WEBHOOK_ALLOWED_NETWORKS", ()))


def webhook_disable_after() -> float:
    """``WEBHOOK_DISABLE_AFTER`` (default ``432000``, 5 days): disable an endpoint
    whose every attempt has failed for this many seconds (410 Gone disables at once).
    A short outage never disables an endpoint, however many messages it holds up."""
    return float(_get("WEBHOOK_DISABLE_AFTER", 432000))


def retention() -> dict:
    """``RETENTION`` (default ``{}``): retention policies per event model label,
    ``"default"``, ``"changes"``, ``"webhook_messages"``, ``"webhook_attempts"`` and ``"sink_messages"``,
    each ``{"max_age": "90d", "keep_last": 10}`` or ``None`` (keep forever). See
    :mod:`audit_stream.retention` for the defaults."""
    return _get("RETENTION", {})


def retention_interval() -> float:
    """``RETENTION_INTERVAL`` (default ``3600`` seconds): how often beat prunes."""
    return float(_get("RETENTION_INTERVAL", 3600))


def partitions() -> dict:
    """``PARTITIONS`` (default ``{}``): event models (or ``"audit_stream.RowLog"``)
    kept as range partitions of ``pgh_id``, each ``{"size": 1_000_000, "ahead": 2}``
    (ids per partition, empty partitions created ahead). See :mod:`audit_stream.partitions`."""
    return _get("PARTITIONS", {})


def metrics_token() -> str | None:
    """``METRICS_TOKEN`` (default ``None``): a bearer token that may read
    ``/audit-stream/metrics`` without logging in (for Prometheus)."""
    return _get("METRICS_TOKEN", None)


def dashboard_shows_all_models() -> bool:
    """``DASHBOARD_SHOWS_ALL_MODELS`` (default ``False``): whoever may view the
    dashboard sees every model's changes and webhook payloads. By default a user
    sees a model's data only with its view (or change) permission."""
    return _get("DASHBOARD_SHOWS_ALL_MODELS", False)


#: Not logged by ``initlogging`` unless ``IGNORE_TABLES`` says otherwise:
#: session rows are credentials, and they change on every request.
DEFAULT_IGNORE_TABLES = ("django_session",)


def ignore_tables() -> list[str]:
    """``IGNORE_TABLES`` (default ``["django_session"]``): tables ``manage.py
    initlogging`` leaves alone, as ``"table"``, ``"schema.table"`` or a shell
    pattern (``"celery_*"``). ``settings.PG_MEMENTO_IGNORE_TABLES`` (from
    django-pgMemento) is honoured too: the two lists are joined. audit_stream's
    own tables, ``django_migrations`` and tables tracked with ``@track`` are
    never logged, whatever the list says."""
    configured = _get("IGNORE_TABLES", None)
    alias = getattr(settings, "PG_MEMENTO_IGNORE_TABLES", None)
    if configured is None and alias is None:
        return list(DEFAULT_IGNORE_TABLES)
    return [*(configured or ()), *(alias or ())]


def schema() -> str:
    """``SCHEMA`` (default ``"public"``): the schema audit_stream's tables and event
    tables live in. Every function audit_stream installs names them with it and
    runs with ``search_path = pg_catalog, <SCHEMA>, pg_temp``; it is compiled into
    the triggers, so run ``makemigrations`` after changing it."""
    return _get("SCHEMA", "public")


def mask() -> dict:
    """``MASK`` (default ``{"auth_user": ["password"]}``): fields shown masked everywhere
    outside the event tables (``Change``, webhook and sink payloads, dashboard, admin
    history), per model label (``{"shop.Customer": ["email", "ssn"]}``) or, for tables
    logged by ``initlogging``, per table (``{"auth_user": ["password"]}``, columns). Added
    to ``track(..., mask=[...])``; the default stays unless you set ``"auth_user": []``.
    See :mod:`audit_stream.masking`."""
    return _get("MASK", {})


def mask_key() -> str | None:
    """``MASK_KEY`` (default ``None``: masked values are ``"***"``): a secret (16+
    characters) that makes masked values a keyed hash, ``"hmac:"`` and 16 hex digits of
    HMAC-SHA256(key, value), equal for equal values, so a consumer sees a value change
    without learning it."""
    return _get("MASK_KEY", None)
