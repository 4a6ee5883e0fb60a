"""Who may delete history, and lifting the append-only protection for one batch."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from django.db import DEFAULT_DB_ALIAS, connections

from audit_stream import triggers

__all__ = ["allow_prune", "may_delete"]


@contextlib.contextmanager
def allow_prune(using: str = DEFAULT_DB_ALIAS) -> Iterator[None]:
    """Allow DELETE on event tables until the end of the current transaction.

    Must be used inside ``transaction.atomic()``: the permission is a
    transaction-local setting, so it can never outlive the batch it was
    opened for.
    """
    connection = connections[using]
    if not connection.in_atomic_block:
        raise RuntimeError("allow_prune() must be used inside transaction.atomic(), so it ends with it.")
    with connection.cursor() as cursor:
        cursor.execute("SELECT set_config(%s, 'on', true)", [triggers.ALLOW_PRUNE_SETTING])
    try:
        yield
    finally:
        if connection.in_atomic_block and not connection.needs_rollback:
            with connection.cursor() as cursor:
                cursor.execute("SELECT set_config(%s, '', true)", [triggers.ALLOW_PRUNE_SETTING])


def may_delete(table: str, using: str = DEFAULT_DB_ALIAS) -> bool:
    """Whether the connected role holds the ``DELETE`` privilege on ``table``."""
    with connections[using].cursor() as cursor:
        cursor.execute("SELECT has_table_privilege(%s, 'DELETE')", [triggers.qualified(table)])
        return cursor.fetchone()[0]


def privilege_error(table: str) -> str:
    """What to do when the role may not delete from ``table``."""
    return (
        f"the role this runs as may not delete from {table} (history): prune it as the owner role"
        " (manage.py prune_history), or grant the privilege with manage.py audit_stream_grants --pruner."
    )
