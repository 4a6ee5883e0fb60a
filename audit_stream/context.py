"""``audit_stream.context``: who and why, attached to every event written inside it.

State lives in a :class:`contextvars.ContextVar`, so threads, async tasks,
``sync_to_async`` and ASGI requests each see their own context.

The context reaches the triggers without an extra round trip: an execute
wrapper, installed on every connection of every database alias, prefixes each
statement that can fire a trigger with::

    SELECT set_config('audit_stream.context_id', %s, true),
           set_config('audit_stream.context_metadata', %s, true);

in the same query string. The values are bound parameters (never formatted
into SQL), ``pg_stat_statements`` sees one normalised statement, and
``is_local => true`` ends them with the transaction, so nothing leaks to the
next request on a reused or pooled connection.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from django.db import transaction

from audit_stream import config, triggers

__all__ = ["context", "new_context"]


@dataclass
class _State:
    """The active context: its id, metadata, and the metadata as sent to SQL.

    ``attached`` remembers, per database alias, the metadata that a committed
    statement carried and until when the triggers keep its row; ``sent``, the
    aliases that a settings statement already went to (see :func:`_inject`).
    """

    id: uuid.UUID
    metadata: dict[str, Any] = field(default_factory=dict)
    serialized: str = "{}"
    attached: dict[str, tuple[str, float]] = field(default_factory=dict)
    sent: set[str] = field(default_factory=set)

    def update(self, metadata: dict[str, Any]) -> None:
        merged = {**self.metadata, **metadata}
        self.serialized = _serialize(merged)
        self.metadata = merged


_active: contextvars.ContextVar[_State | None] = contextvars.ContextVar("audit_stream_context", default=None)


def _current() -> _State | None:
    """The active context, or ``None``."""
    return _active.get()


def _serialize(metadata: dict[str, Any]) -> str:
    """Metadata as JSON text, or a ``TypeError``/``ValueError`` that names the offending key."""
    for key, value in metadata.items():
        if _has_nul(key) or _has_nul(value):
            # PostgreSQL's jsonb cannot store NUL: the user's write would fail.
            raise ValueError(
                f"audit_stream.context: the value of {key!r} contains a NUL character (\\x00),"
                " which PostgreSQL cannot store; remove it."
            )
    encoder = config.json_encoder()
    try:
        return json.dumps(metadata, cls=encoder, allow_nan=False)
    except (TypeError, ValueError):
        for key, value in metadata.items():
            try:
                json.dumps(value, cls=encoder, allow_nan=False)
            except (TypeError, ValueError) as exc:
                raise TypeError(
                    f"audit_stream.context: the value of {key!r} ({type(value).__name__}) is not"
                    f" JSON serialisable ({exc}). Pass a string, number, bool, None, list, dict,"
                    " date, UUID or Decimal (not NaN or infinity), or set AUDIT_STREAM['JSON_ENCODER']."
                ) from None
        raise


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return any(_has_nul(v) for v in value)
    return False


class context(contextlib.ContextDecorator):
    """Group the changes made inside it under one ``Context``, with metadata.

    As a context manager (or decorator), every event written inside it, on any
    tracked model and any database, points to the same
    :class:`audit_stream.models.Context` row, whose ``metadata`` holds the
    keyword arguments. Entering it again inside adds metadata to the one
    context of the outermost entry.

    Called as a function, it adds metadata to the active context if there is
    one, and does nothing otherwise::

        with audit_stream.context(user=request.user.pk, url=request.path):
            order.save()
            audit_stream.context(reason="refund")  # added to the same context

    Metadata must be JSON serialisable (dates, UUIDs and Decimals are, with
    the default encoder); anything else raises :class:`TypeError` naming the
    key, before any SQL is sent.

    Note:
        Named cursors (``QuerySet.iterator()`` on PostgreSQL) are not given
        the context; they only read, so no event is affected.
    """

    def __init__(self, **metadata: Any) -> None:
        self._serialized = _serialize(metadata)  # fail here, before any SQL
        self.metadata = metadata
        self._token: contextvars.Token | None = None
        state = _active.get()
        if state is not None:
            state.update(metadata)

    def __enter__(self) -> _State:
        state = _active.get()
        if state is None:
            state = _State(id=uuid.uuid4(), metadata=dict(self.metadata), serialized=self._serialized)
            self._token = _active.set(state)
        return state

    def __exit__(self, *exc_info: Any) -> None:
        if self._token is not None:
            _active.reset(self._token)
            self._token = None

    async def __aenter__(self) -> _State:
        return self.__enter__()

    async def __aexit__(self, *exc_info: Any) -> None:
        self.__exit__(*exc_info)

    def _recreate_cm(self) -> context:
        # As a decorator, each call gets its own entry (and token): safe
        # across threads and tasks.
        fresh = object.__new__(type(self))
        fresh.metadata = self.metadata
        fresh._serialized = self._serialized
        fresh._token = None
        return fresh

    def __call__(self, func):
        """Decorate a function (sync or async) to run inside this context."""
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def inner(*args, **kwargs):
                async with self._recreate_cm():
                    return await func(*args, **kwargs)

            return inner
        return super().__call__(func)


@contextlib.contextmanager
def new_context(**metadata: Any) -> Iterator[_State]:
    """A context of its own for the block, even inside another one (undo uses it).

    It starts with the metadata of the active context, if any (who asked, from
    where), plus ``metadata``; the active context is back after the block. Unlike
    :class:`context`, entering it inside another context never merges into it.
    """
    outer = _active.get()
    token = _active.set(None)
    try:
        with context(**{**(outer.metadata if outer is not None else {}), **metadata}) as state:
            yield state
    finally:
        _active.reset(token)


# Statements that can fire a trigger. Everything else (SELECT, SET, BEGIN,
# SAVEPOINT, VACUUM, DDL...) is sent untouched.
_WRITES = ("insert", "update", "delete", "merge", "with", "copy", "call", "do", "truncate")

# The settings statement sent in front of a write: the context id and its
# metadata, as transaction-local settings the triggers read.
_SET = (
    f"SELECT set_config('{triggers.CONTEXT_ID_SETTING}', %s, true),"
    f" set_config('{triggers.CONTEXT_METADATA_SETTING}', %s, true); "
)

# The same with a probe: its third column says whether an earlier, committed
# statement of this session attached this context with this metadata and the
# row stays marked for more than _TRUST_SECONDS (the trigger's session marker,
# see triggers.attach_context_function): only then may later autocommit writes
# carry the id alone. Columns are evaluated in order, so the third sees the
# values just set. The probe costs the server about as much as the rest of the
# statement, so it is sent only where its answer can be used: in autocommit,
# from a context's second write on (nothing can have attached a context before
# its first write).
_SET_AND_PROBE = (
    f"SELECT set_config('{triggers.CONTEXT_ID_SETTING}', %s, true),"
    f" set_config('{triggers.CONTEXT_METADATA_SETTING}', %s, true),"
    f" left(current_setting('{triggers.ATTACHED_SETTING}', true), 36)"
    f" = current_setting('{triggers.CONTEXT_ID_SETTING}')"
    f" AND current_setting('{triggers.ATTACHED_METADATA_SETTING}', true)"
    f" = current_setting('{triggers.CONTEXT_METADATA_SETTING}')"
    f" AND substr(current_setting('{triggers.ATTACHED_SETTING}', true), 38)"
    f" > (extract(epoch FROM now())::bigint + 540)::text; "
)
_DIRTY = "_audit_stream_context_set"


def _first_word(sql: str) -> str:
    """The first keyword of ``sql``, after whitespace and ``--`` / ``/* */`` comments (lower case)."""
    i, n = 0, len(sql)
    while i < n:
        if sql[i].isspace():
            i += 1
        elif sql.startswith("--", i):
            end = sql.find("\n", i)
            i = n if end < 0 else end + 1
        elif sql.startswith("/*", i):
            depth, i = 1, i + 2  # PostgreSQL's block comments nest
            while i < n and depth:
                if sql.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif sql.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
        else:
            break
    end = i
    while end < n and (sql[end].isalpha() or sql[end] == "_"):
        end += 1
    return sql[i:end].lower()


def _is_write(sql: str) -> bool:
    """Whether ``sql`` can fire a trigger (see :data:`_WRITES`); ``sql`` is text."""
    head = sql[:12].lower()
    if head.startswith(_WRITES):  # the common case: no leading space or comment
        return True
    if head[:1].isalpha():
        return False
    return _first_word(sql) in _WRITES


def _as_text(sql: Any, cursor: Any) -> str:
    """The statement as text: ``bytes`` decoded, a ``psycopg.sql`` composition rendered."""
    if isinstance(sql, str):
        return sql
    if isinstance(sql, bytes):
        return sql.decode()
    return sql.as_string(cursor)


#: How long a committed attach is trusted: less than the 10 minutes for which the
#: triggers' attach keeps a context safe from retention (triggers.ATTACH_CONTEXT_FUNCTION).
_TRUST_SECONDS = 540.0


def _inject(execute, sql, params, many, ctx):
    """Execute wrapper: send the context along with statements that can write.

    In autocommit, once a statement that carried the context's metadata has
    committed (so its ``Context`` row exists, with that metadata), the next
    statements carry only the context id, in a leading comment, for
    :data:`_TRUST_SECONDS`: no ``set_config`` statement for the server to run.
    The id is a UUID generated here, never user input; metadata always travels
    as bound parameters. Inside a transaction block every write carries the
    metadata, since the block may still roll back.
    """
    connection = ctx["connection"]
    state = _active.get()
    raw_cursor = ctx["cursor"].cursor
    if not isinstance(sql, str):
        sql = _as_text(sql, raw_cursor)
    if not _is_write(sql) or getattr(raw_cursor, "name", None):
        return execute(sql, params, many, ctx)
    autocommit = connection.autocommit and not connection.in_atomic_block and not many
    if state is not None and autocommit:
        attached = state.attached.get(connection.alias)
        if attached is not None and attached[0] == state.serialized and time.monotonic() < attached[1]:
            return execute(triggers.CONTEXT_COMMENT.format(state.id) + sql, params, many, ctx)
        if connection.alias not in state.sent:  # the context's first write here: nothing to probe
            state.sent.add(connection.alias)
            return _inject_settings(execute, sql, params, many, ctx, state)[0]
        sent_at = time.monotonic()
        result, marked = _inject_settings(execute, sql, params, many, ctx, state, probe=True)
        if marked:  # the row exists (an earlier, committed statement attached it)
            state.attached[connection.alias] = (state.serialized, sent_at + _TRUST_SECONDS)
        return result
    return _inject_settings(execute, sql, params, many, ctx, state)[0]


def _inject_settings(execute, sql, params, many, ctx, state, probe=False):
    """Send the context as transaction-local settings in front of the statement.

    Returns the statement's result, and (with ``probe``) whether the settings
    statement found the context already attached by this session (see
    :data:`_SET_AND_PROBE`).
    """
    connection = ctx["connection"]

    if state is None:
        if not connection.in_atomic_block:
            setattr(connection, _DIRTY, False)  # autocommit: a new transaction
            return execute(sql, params, many, ctx), False
        if not getattr(connection, _DIRTY, False):
            return execute(sql, params, many, ctx), False
        # A context exited earlier in this transaction: clear it.
        values = ("", "")
    else:
        values = (str(state.id), state.serialized)
        if connection.in_atomic_block:
            setattr(connection, _DIRTY, True)

    if many or connection.settings_dict.get("OPTIONS", {}).get("server_side_binding"):
        # executemany() and server-side binding use the extended protocol,
        # which cannot carry two statements: one extra round trip here, in a
        # transaction so that the transaction-local settings reach the writes.
        with transaction.atomic(using=connection.alias):
            ctx["cursor"].cursor.execute(_SET.rstrip("; "), values)
            return execute(sql, params, many, ctx), False

    if params is None:
        sql = sql.replace("%", "%%")
        params = values
    else:
        params = _prefix_params(values, params)
    prefix = _SET_AND_PROBE if probe else _SET
    if isinstance(params, dict):
        prefix = prefix.replace("%s", "%(_audit_stream_context_id)s", 1).replace(
            "%s", "%(_audit_stream_context_metadata)s", 1
        )
    result = execute(prefix + sql, params, many, ctx)
    cursor = ctx["cursor"].cursor
    marked = False
    if probe:
        row = cursor.fetchone()
        marked = bool(row and row[2])
    while cursor.nextset():  # the caller wants the result of its own statement
        pass
    return result, marked


def _prefix_params(values: tuple[str, str], params: Any) -> Any:
    if isinstance(params, dict):
        return {"_audit_stream_context_id": values[0], "_audit_stream_context_metadata": values[1], **params}
    return (*values, *params)


def _install(connection: Any, **kwargs: Any) -> None:
    """Add the execute wrapper to a PostgreSQL connection (on ``connection_created``)."""
    if connection.vendor == "postgresql" and _inject not in connection.execute_wrappers:
        connection.execute_wrappers.append(_inject)
