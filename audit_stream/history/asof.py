"""``audit_stream.as_of``: an object, a model or a QuerySet as it was at a moment."""

from __future__ import annotations

from datetime import datetime
from typing import TypeVar, overload

from django.db import models
from django.utils import timezone

from audit_stream.history import states
from audit_stream.history.query import as_of_queryset

__all__ = ["as_of"]

M = TypeVar("M", bound=models.Model)


@overload
def as_of(target: M, when: datetime) -> M: ...
@overload
def as_of(target: type[M], when: datetime) -> models.QuerySet[M]: ...
@overload
def as_of(target: models.QuerySet[M], when: datetime) -> models.QuerySet[M]: ...


def as_of(target, when):
    """``target`` as it was at ``when``, read from its history.

    * ``as_of(obj, when)``: an instance of ``obj``'s model with the values the
      object had at ``when``. It is not saved and cannot be (``save()`` raises
      :class:`~audit_stream.history.ReadOnlyHistoryError`).
    * ``as_of(Model, when)`` and ``as_of(queryset, when)``: a QuerySet of every
      object that existed at ``when``, with its values then. Filters,
      exclusions, ordering, counts, slices and pagination apply to those
      values, in one SQL query over the event table.

    Foreign keys of the instances whose target model has a history resolve to
    the target as of the same moment (untracked targets: the live row), and
    many-to-many fields tracked with ``track(m2m_fields=...)`` return the set
    as of that moment.

    A moment is "at or before ``when``" by the time of the transaction that
    wrote each event (``pgh_created_at``). An object has a history from its
    first event on: rows that existed before tracking started need
    ``manage.py backfill_history``.

    Args:
        target: A model instance, a model class or a QuerySet.
        when: An aware ``datetime`` (a naive one is read in the current time zone).

    Raises:
        Model.DoesNotExist: ``as_of(obj, when)`` when the object did not exist
            at ``when`` (not yet created, or deleted).
        ValueError: If the model's history cannot give whole states (its event
            model misses a field or an insert, update or delete event; the
            message says which), or the object has no recorded event at all.
    """
    if not isinstance(when, datetime):
        raise TypeError(f"as_of needs a datetime, not {type(when).__name__}: e.g. timezone.now().")
    if timezone.is_naive(when):
        when = timezone.make_aware(when)
    if isinstance(target, models.QuerySet):
        return as_of_queryset(target, when)
    if isinstance(target, type) and issubclass(target, models.Model):
        return as_of_queryset(target._default_manager.all(), when)
    if isinstance(target, models.Model):
        return _object_as_of(target, when)
    raise TypeError(f"as_of takes a model instance, a model or a QuerySet, not {type(target).__name__}.")


def _object_as_of(obj: models.Model, when: datetime) -> models.Model:
    model = type(obj)
    manager = model._base_manager.db_manager(obj._state.db)
    try:
        return as_of_queryset(manager.all(), when).get(pk=obj.pk)
    except model.DoesNotExist:
        pass
    source = states.source_for(model, using=manager.db)
    if source.event_model is not None and not (
        source.event_model._base_manager.db_manager(manager.db).filter(pgh_obj_id=obj.pk).exists()
    ):
        raise ValueError(
            f"{model._meta.label} {obj.pk} has no event in {source.event_model._meta.label}: it"
            f" predates tracking. Run `manage.py backfill_history {model._meta.label}` to record"
            " its state (label 'backfill')."
        )
    raise model.DoesNotExist(
        f"{model._meta.verbose_name} {obj.pk} did not exist at {when.isoformat()} (not yet created,"
        " or deleted)."
    )
