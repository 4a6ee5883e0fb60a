"""Many-to-many history: ``track(..., m2m_fields=["tags"])``.

A many-to-many field lives in its through table, so saving the object does not
touch it: ``add()``, ``remove()``, ``clear()``, ``set()`` and raw SQL write the
through table. Triggers on the through table (:class:`M2MTrigger`, built on
:mod:`audit_stream.triggers` like every event trigger, so they share its
template, context and wake-up) record, for each object a statement touched,
the whole set after the statement in an event model of the *object*:

====================  ======================================================
``BookTagsEvent``     ``pgh_obj`` (the book), ``pgh_context``, ``tags``: the
                      primary keys of the book's tags after the statement,
                      sorted
====================  ======================================================

The event model's tracked model is the object's model, so the fold, the change
feed and webhooks show a change of the book whose diff is the set before and
after (``{"tags": [[1, 2], [2, 3]]}``); ``AggregateEvent.target(book)``, the
admin history and ``as_of`` read it like any other event of the book. The
triggers go on the through model, or on a proxy of it in the event model's app
when Django created it (so that ``makemigrations`` writes them).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import pgtrigger
from django.contrib.postgres.fields import ArrayField
from django.db import models
from django.db.models.fields.related import lazy_related_operation

from audit_stream import events, registry, triggers
from audit_stream.fields import history_field

if TYPE_CHECKING:
    from audit_stream.event import Event

__all__ = ["M2MEvent", "M2MTrigger", "track_m2m"]

_OLD, _NEW = "_old", "_new"


class M2MTrigger(triggers._Trigger):
    """After a statement on a through table: one event per object it touched, with the set after it."""

    level = pgtrigger.Statement
    when = pgtrigger.After

    def __init__(self, *, name: str, event_model: type[models.Model], operation: pgtrigger.Operation):
        self.event_model = event_model
        op = str(operation)
        self._sides = {"INSERT": [_NEW], "UPDATE": [_OLD, _NEW], "DELETE": [_OLD]}[op]
        referencing = triggers.transition_tables(operation)
        super().__init__(
            name=name,
            operation=operation,
            referencing=referencing,
            declare=[("_ignore", "text"), ("_context_id", "uuid")],
        )

    def get_func(self, model: type[models.Model]) -> str:
        event_model = self.event_model
        field = event_model.pgh_tracked_model._meta.get_field(event_model._pgh_m2m_field)
        through = field.remote_field.through._meta.db_table
        source = triggers.quote_name(field.m2m_column_name())
        target = triggers.quote_name(field.m2m_reverse_name())
        column = triggers.quote_name(event_model._meta.get_field(field.name).column)
        table = event_model._meta.db_table
        touched = " UNION ".join(f"SELECT DISTINCT {source} AS obj FROM {side}" for side in self._sides)
        # No PL/pgSQL variable in the INSERT (see EventTrigger: a cached plan).
        # The set is read from the through table itself, after the statement:
        # every row of the object, not only the ones the statement touched.
        body = f"""
            {triggers.IGNORE_CHECK}
            INSERT INTO {triggers.qualified(table)}
                (pgh_label, pgh_xid, pgh_obj_id, pgh_context_id, {column})
            SELECT {triggers._literal(event_model._pgh_m2m_label)}, pg_current_xact_id()::text::bigint, o.obj,
                   (SELECT {triggers.CONTEXT_ID_SQL}),
                   ARRAY(SELECT r.{target} FROM {triggers.qualified(through)} AS r
                         WHERE r.{source} = o.obj ORDER BY 1)
            FROM ({touched}) AS o
            WHERE o.obj IS NOT NULL;
            {triggers.after_events(table)}
        """
        return triggers._compact(body)


class M2MEvent(events.DatabaseEvent):
    """The change of one many-to-many field (declared by ``track(m2m_fields=...)``)."""

    def __init__(self, field_name: str) -> None:
        events.Event.__init__(self, f"{field_name}_changed")
        self.field_name = field_name
        self.operation = pgtrigger.Insert | pgtrigger.Update | pgtrigger.Delete
        self.snapshot = "NEW"
        self.condition = None

    def get_triggers(self, event_model: type[models.Model]) -> list[M2MTrigger]:
        return [
            M2MTrigger(
                name=f"m2m_{suffix}_{event_model._pgh_key}",
                event_model=event_model,
                operation=operation,
            )
            for suffix, operation in (
                ("ins", pgtrigger.Insert),
                ("upd", pgtrigger.Update),
                ("del", pgtrigger.Delete),
            )
        ]

    def trigger_target(self, event_model: type[models.Model]) -> type[models.Model]:
        """The through model, or a proxy of it in the event model's app (for migrations)."""
        through = event_model.pgh_tracked_model._meta.get_field(self.field_name).remote_field.through
        app_label = event_model._meta.app_label
        if through._meta.app_label == app_label and not through._meta.auto_created:
            return through
        name = f"{event_model.__name__}Tracking"
        module = sys.modules[event_model.__module__]
        proxy = getattr(module, name, None)
        if proxy is None:
            meta = type("Meta", (), {"proxy": True, "app_label": app_label, "auto_created": False})
            proxy = type(name, (through,), {"__module__": event_model.__module__, "Meta": meta})
            setattr(module, name, proxy)
        return proxy


def _members_field(target_pk: models.Field) -> ArrayField:
    base = history_field(target_pk.target_field if target_pk.is_relation else target_pk)
    base.null = False
    return ArrayField(base, default=list, help_text="The members' primary keys after the change, sorted.")


def _create(
    model: type[models.Model], field: models.ManyToManyField, target: type[models.Model], app_label: str
) -> type[Event]:
    from audit_stream.event import Event, context_field  # models: not before apps are ready

    name = f"{model._meta.object_name}{''.join(p.title() for p in field.name.split('_'))}Event"
    module = model.__module__ if model._meta.app_label == app_label else f"{app_label}.models"
    attrs = {
        "__module__": module,
        "Meta": type("Meta", (), {"app_label": app_label}),
        "pgh_obj": models.ForeignKey(
            model,
            on_delete=models.DO_NOTHING,
            db_constraint=False,
            db_index=False,
            related_name=f"{field.name}_events",
        ),
        "pgh_context": context_field(),
        field.name: _members_field(target._meta.pk),
        "pgh_tracked_model": model,
        "pgh_events": (M2MEvent(field.name),),
        "_pgh_m2m_field": field.name,
        "_pgh_m2m_label": f"{field.name}_changed",
    }
    event_model = type(name, (Event,), attrs)
    setattr(sys.modules[module], name, event_model)
    return event_model


def track_m2m(model: type[models.Model], field_names: list[str], app_label: str | None = None) -> None:
    """Record the many-to-many fields ``field_names`` of ``model`` (see the module docstring)."""
    for field_name in field_names:
        try:
            field = model._meta.get_field(field_name)
        except Exception:
            field = None
        if not isinstance(field, models.ManyToManyField):
            registry.problem(
                model._meta.label,
                f"{model._meta.label} has no many-to-many field {field_name!r} (in m2m_fields=).",
                (
                    "Choose among: " + ", ".join(sorted(f.name for f in model._meta.many_to_many)) + "."
                    if model._meta.many_to_many
                    else "Remove m2m_fields: the model has no many-to-many field."
                ),
                "audit_stream.E001",
            )
            continue

        def _build(_model, _through, target, field=field):
            _create(model, field, target, app_label or model._meta.app_label)

        lazy_related_operation(_build, model, field.remote_field.through, field.remote_field.model)
