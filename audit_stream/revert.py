"""Revert an object to a recorded version, or restore a deleted object.

Both run in one transaction inside ``audit_stream.context(reverted_to=...)``
(or ``restored_from=...``), so the revert is itself recorded, with who asked
for it when called from a request. Only event models that record every
concrete field of the tracked model can revert it.
"""

from __future__ import annotations

from django.db import DatabaseError, IntegrityError, models, transaction

from audit_stream import keys
from audit_stream.context import context

__all__ = ["RevertError", "can_revert", "changes_to_apply", "restore", "revert"]


class RevertError(Exception):
    """A revert or restore that could not be done; nothing was changed."""


def _fields(tracked: type[models.Model]) -> list[models.Field]:
    return [f for f in tracked._meta.concrete_fields if not f.primary_key]


def can_revert(event_model: type[models.Model]) -> bool:
    """Whether ``event_model`` records every concrete field of its tracked model (and the object).

    The row log of ``initlogging`` always can: it rebuilds whole rows.
    """
    if _is_row_log(event_model):
        return True
    tracked = event_model.pgh_tracked_model
    recorded = event_model._pgh_tracked_fields
    return event_model._pgh_has_obj and all(f.attname in recorded for f in _fields(tracked))


def _is_row_log(event_model) -> bool:
    from audit_stream.models import RowLog

    return event_model is RowLog


def _recorded(event, using: str | None) -> tuple[type[models.Model], object, dict[str, object]]:
    """(model, primary key, {attname: value}) of the version ``event`` recorded."""
    if _is_row_log(type(event)):
        from audit_stream import rowlog

        instance = rowlog.recorded_instance(event, using=using)
        if instance is None:
            raise RevertError(f"Entry {event.pk} of the row log records no state of {event.logged_table}.")
        return (
            type(instance),
            instance.pk,
            {f.attname: getattr(instance, f.attname) for f in _fields(type(instance))},
        )
    if not can_revert(type(event)):
        raise RevertError(
            f"{type(event)._meta.label} does not record every field of"
            f" {event.pgh_tracked_model._meta.label}, so it cannot revert it; track all fields to revert."
        )
    tracked = event.pgh_tracked_model
    pk = keys.parse(tracked, event.pgh_obj_id) if keys.is_composite(tracked) else event.pgh_obj_id
    return tracked, pk, {f.attname: getattr(event, f.attname) for f in _fields(tracked)}


def _key(event) -> str:
    return f"{event._meta.db_table}:{event.pgh_id}"


def changes_to_apply(obj: models.Model, event) -> list[tuple[models.Field, object, object]]:
    """What reverting ``obj`` to ``event`` would change: (field, current value, recorded value)."""
    _, _, values = _recorded(event, obj._state.db)
    return [
        (f, getattr(obj, f.attname), values[f.attname])
        for f in _fields(type(obj))
        if getattr(obj, f.attname) != values[f.attname]
    ]


def revert(event, *, using: str | None = None) -> models.Model:
    """Set the object's fields to the values recorded in ``event``; return the object.

    Raises :class:`RevertError` if the object is gone (restore it instead), the
    event model cannot revert, or the database refuses the result (e.g. a
    unique value now used by another row); nothing is changed then.
    """
    tracked, pk, values = _recorded(event, using)
    manager = tracked._default_manager.db_manager(using)
    try:
        with transaction.atomic(using=manager.db), context(reverted_to=_key(event)):
            obj = manager.select_for_update().filter(pk=pk).first()
            if obj is None:
                raise RevertError(f"{tracked._meta.verbose_name} {pk} no longer exists: restore it instead.")
            for attname, value in values.items():
                setattr(obj, attname, value)
            obj.save(using=manager.db)
    except (IntegrityError, DatabaseError) as exc:
        raise RevertError(
            f"Could not revert {tracked._meta.verbose_name} {pk}: {exc}. Nothing was changed."
        ) from exc
    return obj


def restore(event, *, using: str | None = None) -> models.Model:
    """Re-create a deleted object from the state recorded in ``event``; return it."""
    tracked, pk, values = _recorded(event, using)
    manager = tracked._default_manager.db_manager(using)
    try:
        with transaction.atomic(using=manager.db), context(restored_from=_key(event)):
            if manager.filter(pk=pk).exists():
                raise RevertError(f"{tracked._meta.verbose_name} {pk} exists: revert it instead.")
            # (a composite key's columns are among the values)
            obj = tracked(**values) if keys.is_composite(tracked) else tracked(pk=pk, **values)
            obj.save(using=manager.db, force_insert=True)
    except (IntegrityError, DatabaseError) as exc:
        raise RevertError(
            f"Could not restore {tracked._meta.verbose_name} {pk}: {exc}. Nothing was changed."
        ) from exc
    return obj
