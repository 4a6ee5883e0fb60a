"""Retention: the one code path allowed to delete history.

Event tables refuse UPDATE and DELETE (see :class:`audit_stream.triggers.AppendOnly`).
Retention deletes inside :func:`allow_prune`, which lifts the protection for
DELETE only, for the current transaction only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from django.db import DEFAULT_DB_ALIAS, connections

from audit_stream import triggers


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
