"""As-of instances: read-only, and their relations answer as of the same moment.

Django looks a foreign key up in ``instance._state.fields_cache`` and a
many-to-many manager's rows in ``instance._prefetched_objects_cache`` before
querying. An as-of instance gets caches that, on a miss, fill themselves from
history: a foreign key to a model with history resolves to the target as it
was at the same moment (``None`` if it did not exist then), to an untracked
model to the live row; a many-to-many field tracked with ``m2m_fields`` returns
the set recorded at that moment. Nothing is queried until it is read.

The history is read through the function the as-of QuerySet hands in
(:func:`audit_stream.history.query.as_of_queryset`): that module yields these
instances, and this one does not import it back.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from datetime import datetime

from django.db import models
from django.db.models.expressions import RawSQL

from audit_stream import tracking
from audit_stream.history import states
from audit_stream.history.errors import ReadOnlyHistoryError
from audit_stream.triggers import quote_name

__all__ = ["Reader", "freeze", "is_as_of", "m2m_ids_sql"]

#: ``(queryset, when)`` -> that queryset over the rows as they were at ``when``.
Reader = Callable[[models.QuerySet, datetime], models.QuerySet]

# The members of one object's many-to-many field at a moment: the set recorded
# by its latest m2m event at or before it (empty if none).
_M2M_IDS_SQL = """
SELECT unnest(e.{column}) FROM (
    SELECT x.{column} FROM {event_table} AS x
    WHERE x.pgh_obj_id = %s AND x.pgh_created_at <= %s
    ORDER BY x.pgh_id DESC LIMIT 1
) AS e
"""


def _refuse_write(obj: models.Model, *args, **kwargs):
    raise ReadOnlyHistoryError(
        f"{obj._meta.verbose_name} {obj.pk} as of {obj._pgh_as_of.isoformat()} is a past version: it"
        " cannot be saved or deleted. To bring these values back, revert to the event"
        " (audit_stream.revert) or copy them onto the live object."
    )


def is_as_of(obj: models.Model) -> bool:
    """Whether ``obj`` is a past version returned by :func:`audit_stream.as_of`."""
    return getattr(obj, "_pgh_as_of", None) is not None


def m2m_event_model(model: type[models.Model], field_name: str) -> type[models.Model] | None:
    """The event model recording ``model``'s many-to-many field ``field_name``, if tracked."""
    for event_model in tracking.event_models_for(model):
        if getattr(event_model, "_pgh_m2m_field", None) == field_name:
            return event_model
    return None


def m2m_ids_sql(event_model: type[models.Model], pk, when: datetime) -> RawSQL:
    """The members' primary keys of one object's m2m field at ``when``, as a subquery."""
    column = event_model._meta.get_field(event_model._pgh_m2m_field).column
    sql = _M2M_IDS_SQL.format(column=quote_name(column), event_table=quote_name(event_model._meta.db_table))
    return RawSQL(sql, [pk, when])


def _history_or_live(
    model: type[models.Model], when: datetime, using: str | None, read: Reader
) -> models.QuerySet:
    manager = model._base_manager.db_manager(using)
    try:
        states.source_for(model, using=manager.db)
    except ValueError:
        return manager.all()
    return read(manager.all(), when)


class _AsOf(dict):
    """The relation cache of an as-of instance, and its refusal to be written.

    One object per instance serves as ``_state.fields_cache`` (foreign keys:
    the target as of the same moment) and ``_prefetched_objects_cache``
    (many-to-many fields tracked with ``m2m_fields``: the set of the moment):
    field names are unique in a model, so the two never share a key. Called, it
    raises (it stands in for ``save()`` and ``delete()``). It holds the
    instance weakly: no reference cycle, so 100,000 instances cost the garbage
    collector what plain ones do.
    """

    __slots__ = ("_obj", "_read", "_when")

    def __init__(self, obj: models.Model, when: datetime, cached: dict, read: Reader) -> None:
        super().__init__(cached)
        self._obj = weakref.ref(obj)
        self._when = when
        self._read = read

    def __missing__(self, name: str):
        obj = self._obj()
        try:
            field = obj._meta.get_field(name)
        except Exception:
            raise KeyError(name) from None
        if field.many_to_many and not field.auto_created:
            value = self._members(obj, field)
        elif field.concrete and (field.many_to_one or field.one_to_one):
            value = self._target(obj, field)
        else:
            raise KeyError(name)  # reverse relations: Django's own lookup (live)
        self[name] = value
        return value

    def _target(self, obj: models.Model, field: models.Field) -> models.Model | None:
        value = getattr(obj, field.attname)
        if value is None:
            return None
        rows = _history_or_live(field.related_model, self._when, obj._state.db, self._read)
        return rows.filter(**{field.target_field.attname: value}).first()

    def _members(self, obj: models.Model, field: models.Field) -> models.QuerySet:
        event_model = m2m_event_model(type(obj), field.name)
        if event_model is None:
            raise KeyError(field.name)  # not tracked: the live set
        rows = _history_or_live(field.related_model, self._when, obj._state.db, self._read)
        return rows.filter(pk__in=m2m_ids_sql(event_model, obj.pk, self._when))

    def __call__(self, *args, **kwargs):
        _refuse_write(self._obj())

    def copy(self) -> dict:
        return dict(self)


def _has_history(model: type[models.Model]) -> bool:
    return bool(tracking.event_models_for(model))


def freeze(obj: models.Model, when: datetime, read: Reader) -> models.Model:
    """Mark ``obj`` as its version at ``when``: read-only, relations as of ``when`` (read by ``read``)."""
    obj._pgh_as_of = when
    cache = _AsOf(obj, when, obj._state.fields_cache, read)
    obj._state.fields_cache = obj._prefetched_objects_cache = cache
    obj.save = obj.asave = obj.delete = obj.adelete = cache
    for related in list(cache.values()):  # select_related(): read from history too
        if isinstance(related, models.Model) and not is_as_of(related) and _has_history(type(related)):
            freeze(related, when, read)
    return obj
