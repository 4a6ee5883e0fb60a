"""Object ids: how the history and the feed name a tracked object, whatever its primary key.

* A single-column key (integer, text, UUID, ...) is named by the key's text,
  as PostgreSQL writes it: ``"42"``, ``"b1f0...-..."``, ``"sku-1"``.
* A composite key (Django 5.2's ``CompositePrimaryKey``) is named by a JSON
  object of every key column, as PostgreSQL's ``jsonb`` writes it:
  ``{"order_id": 1, "product_id": 7}`` (keys ordered by length, then bytes;
  ``", "`` and ``": "`` separators). :func:`object_id` writes the same text in
  Python, so ``Change.objects.for_object(obj)`` and
  ``AggregateEvent.objects.target(obj)`` find the object's history.

Used by the triggers (:func:`sql`), the fold, ``AggregateEvent``, revert and
the admin, so every one of them names an object the same way.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from django.db import models

from audit_stream import exact

__all__ = ["columns", "is_composite", "join", "object_id", "parse", "sql"]


def is_composite(model: type[models.Model]) -> bool:
    """Whether ``model``'s primary key has several columns."""
    return bool(getattr(model._meta, "is_composite_pk", False))


def _parts(model: type[models.Model]) -> list[models.Field]:
    pk = model._meta.pk
    return list(pk.fields) if is_composite(model) else [pk]


def columns(model: type[models.Model]) -> list[str]:
    """The primary key's columns."""
    return [field.column for field in _parts(model)]


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def sql(model: type[models.Model], alias: str) -> str:
    """The SQL expression of the object id of the row ``alias`` of ``model``'s table (text)."""
    if not is_composite(model):
        return f"{alias}.{_quote(model._meta.pk.column)}::text"
    pairs = ", ".join(f"{_literal(c)}, {alias}.{_quote(c)}" for c in columns(model))
    return f"jsonb_build_object({pairs})::text"


def join(model: type[models.Model], left: str, right: str) -> str:
    """The SQL condition that rows ``left`` and ``right`` of ``model``'s table are one object."""
    return " AND ".join(f"{left}.{_quote(c)} = {right}.{_quote(c)}" for c in columns(model))


def _json_value(value: Any) -> str:
    """A key part as jsonb writes it: numbers as numbers, the rest (UUID, date...) as its text."""
    if value is None or isinstance(value, bool | int | float | str | Decimal):
        return exact.dumps(value)
    return exact.dumps(str(value))


def object_id(model: type[models.Model], pk: Any) -> str:
    """The object id of the object of ``model`` with primary key ``pk`` (a tuple for a composite key)."""
    if not is_composite(model):
        return str(pk)
    items = {f.column: _json_value(v) for f, v in zip(_parts(model), pk, strict=True)}
    ordered = sorted(items.items(), key=lambda kv: (len(kv[0].encode()), kv[0].encode()))
    return "{" + ", ".join(f"{json.dumps(k, ensure_ascii=False)}: {v}" for k, v in ordered) + "}"


def parse(model: type[models.Model], text: str) -> Any:
    """The primary key value named by an object id (a tuple for a composite key)."""
    if not is_composite(model):
        return model._meta.pk.to_python(text)
    values = exact.loads(text)
    return tuple(field.to_python(values[field.column]) for field in _parts(model))
