"""The fields of an event model copied from its tracked model, each able to hold any past value."""

from __future__ import annotations

import copy

from django.db import models

__all__ = ["history_field"]


def history_field(field: models.Field) -> models.Field:
    """A copy of a tracked field that can hold any past value of it.

    No uniqueness, no index, no default, no database constraint: history holds
    many rows per object, and the referenced rows may be gone.
    """
    if isinstance(field, models.BigAutoField):
        return models.BigIntegerField(db_column=_own_column(field))
    if isinstance(field, models.SmallAutoField):
        return models.SmallIntegerField(db_column=_own_column(field))
    if isinstance(field, models.AutoField):
        return models.IntegerField(db_column=_own_column(field))
    if isinstance(field, models.GeneratedField):
        output = copy.deepcopy(field.output_field)
        output.db_column = _own_column(field)
        output.null = True  # a generated column is NULL when its expression is
        return output

    field = copy.deepcopy(field)
    swappable = getattr(field, "swappable", None)
    if swappable is not None:
        field.swappable = False  # deconstruct() would otherwise load the model
    _, _path, args, kwargs = field.deconstruct()
    for key in (
        "primary_key",
        "unique",
        "db_index",
        "db_default",
        "auto_now",
        "auto_now_add",
        "unique_for_date",
        "unique_for_month",
        "unique_for_year",
        "db_comment",
        "default",
    ):
        kwargs.pop(key, None)
    cls = type(field)
    if isinstance(field, models.ForeignKey):  # OneToOneField included
        cls = models.ForeignKey
        kwargs.update(
            on_delete=models.DO_NOTHING,
            db_constraint=False,
            related_name="+",
            related_query_name="+",
        )
    new = cls(*args, **kwargs)
    if swappable is not None:
        new.swappable = swappable
    return new


def _own_column(field: models.Field) -> str | None:
    return field.db_column if field.db_column and field.db_column != field.name else None
