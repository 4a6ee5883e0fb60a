"""``track``, ``get_event_model``, ``create_event_model`` and ``create_event``.

The factory copies the tracked fields onto a new model that extends
:class:`audit_stream.models.Event`, and registers the event triggers with
django-pgtrigger, so they are installed by ``makemigrations``/``migrate``.

Problems in a declaration (an unknown field, ``fields`` and ``exclude``
together, a duplicate label) do not raise at import time: they are collected
here and reported by the system checks with the model's name, so
``manage.py check``, ``runserver`` and ``migrate`` stop with a clear message.
"""

from __future__ import annotations

import hashlib
import sys
from typing import TYPE_CHECKING, Any, TypeVar

import pgtrigger
from django.apps import apps
from django.db import connections, models

from audit_stream import config, events, keys, registry, triggers
from audit_stream.context import _current, _serialize
from audit_stream.fields import history_field
from audit_stream.m2m import track_m2m

if TYPE_CHECKING:
    from audit_stream.event import Event

__all__ = ["create_event", "create_event_model", "get_event_model", "track"]

M = TypeVar("M", bound=type[models.Model])


class _Unset:
    def __repr__(self) -> str:
        return "<unset>"


#: "Not passed", as distinct from ``None`` ("no foreign key at all").
UNSET: Any = _Unset()

# (tracked model, label) -> event model, for create_event().
_labels: dict[tuple[type[models.Model], str], type[models.Model]] = {}
# event table -> concrete event model: audit_stream.registry.event_models (this name is kept for
# the modules that still read it here).
_event_models = registry.event_models


#: The event models that track a model, by table name (:func:`audit_stream.registry.event_models_for`).
event_models_for = registry.event_models_for
#: Every table the stream folds (:func:`audit_stream.registry.stream_tables`).
stream_tables = registry.stream_tables


def _pascal(name: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in name.split("_") if part)


def create_event_model(
    base_class: type[Event],
    tracked_model: type[models.Model],
    fields: list[str] | None = None,
    exclude: list[str] | None = None,
    obj_fk: models.ForeignKey | None = UNSET,
    context_fk: models.ForeignKey | None = UNSET,
    abstract: bool = True,
    related_name: str | None = None,
    name: str | None = None,
    app_label: str | None = None,
    attrs: dict[str, Any] | None = None,
    meta: dict[str, Any] | None = None,
) -> type[Event]:
    """Create an event model that snapshots ``tracked_model``.

    Args:
        base_class: The base, :class:`audit_stream.models.Event` or a subclass.
        tracked_model: The model whose history is recorded.
        fields: The fields to copy into each event; all concrete fields when omitted.
        exclude: Fields not to copy (instead of ``fields``).
        obj_fk: The foreign key to the tracked object. Defaults to an
            unconstrained key that keeps history when the object is deleted;
            ``None`` for no key at all.
        context_fk: The foreign key to :class:`audit_stream.models.Context`.
            Defaults to a nullable unconstrained key; ``None`` for none.
        abstract: Whether the model is abstract (to be subclassed by the user).
        related_name: The related name on the tracked model; ``"event"`` when all
            fields are tracked, otherwise built from the field names.
        name: The model name; defaults to ``<Model>[<Fields>]Event``.
        app_label: The app the event model (and its migrations) belong to.
            Required when ``tracked_model`` belongs to an app that is not yours,
            such as ``django.contrib.auth``.
        attrs: More attributes of the model (for example ``pgh_events``).
        meta: More ``Meta`` options.

    Returns:
        The event model class.
    """
    from audit_stream.event import Event, context_field  # models: not before apps are ready

    if not (isinstance(base_class, type) and issubclass(base_class, Event)):
        raise TypeError("base_class must be audit_stream.models.Event or a subclass of it.")

    app_label = app_label or tracked_model._meta.app_label
    if app_label not in apps.app_configs:
        raise ValueError(
            f'app_label "{app_label}" for the history of {tracked_model._meta.label} is not an'
            " installed app: pass the label of one of your apps in INSTALLED_APPS."
        )
    app_config = apps.app_configs[app_label]
    if app_config.module.__name__.startswith("django.") or "site-packages" in (app_config.path or ""):
        raise ValueError(
            f"The history of {tracked_model._meta.label} cannot live in the third-party app"
            f' "{app_label}": pass app_label="<one of your apps>" to track().'
        )

    model_name = name or (
        tracked_model._meta.object_name + "".join(_pascal(f) for f in fields or []) + "Event"
    )
    label = f"{app_label}.{model_name}"

    concrete = [f for f in tracked_model._meta.concrete_model._meta.local_concrete_fields]
    by_name = {f.name: f for f in concrete} | {f.attname: f for f in concrete}
    if fields is not None and exclude is not None:
        registry.problem(
            label,
            f"track() of {tracked_model._meta.label} got both fields and exclude.",
            "Pass one of them: fields lists what to record, exclude what not to.",
            "audit_stream.E002",
        )
        exclude = None
    for arg, names in (("fields", fields), ("exclude", exclude)):
        for field_name in names or ():
            if field_name not in by_name:
                registry.problem(
                    label,
                    f"{tracked_model._meta.label} has no field {field_name!r}"
                    f" (in {arg}= of its history model).",
                    "Choose among: " + ", ".join(sorted(f.name for f in concrete)) + ".",
                    "audit_stream.E001",
                )
    if fields is not None:
        chosen = [by_name[f] for f in fields if f in by_name]
    else:
        excluded = {by_name[f].name for f in exclude or () if f in by_name}
        chosen = [f for f in concrete if f.name not in excluded]

    module = app_config.module.__name__ + ".models"
    class_attrs: dict[str, Any] = {"__module__": module}
    reserved = {"pgh_id", "pgh_created_at", "pgh_label", "pgh_xid", "pgh_obj", "pgh_context"}
    for field in chosen:
        if field.name in reserved:
            registry.problem(
                label,
                f"{tracked_model._meta.label}.{field.name} clashes with an audit_stream field.",
                "Rename the field or exclude it.",
                "audit_stream.E001",
            )
            continue
        class_attrs[field.name] = history_field(field)

    if related_name is None:
        all_tracked = fields is None and not exclude
        related_name = "event" if all_tracked else "_".join(f.name for f in chosen) + "_event"
    if keys.is_composite(tracked_model) and obj_fk is not None:
        if obj_fk is not UNSET:
            registry.problem(
                label,
                f"{tracked_model._meta.label} has a composite primary key: obj_fk cannot point to it"
                " (Django supports no foreign key to a composite key).",
                "Leave obj_fk out: the history then names each object by all its key columns"
                ' (pgh_obj_id, e.g. {"order_id": 1, "product_id": 7}); or pass obj_fk=None for none.',
                "audit_stream.E008",
            )
        # No foreign key can point to a composite key: the object id names every key column.
        obj_fk = None
        class_attrs["pgh_obj_id"] = models.TextField(
            null=True, help_text="The tracked object's composite key, as a JSON object of its columns."
        )
    if obj_fk is UNSET:
        obj_fk = models.ForeignKey(
            tracked_model,
            on_delete=models.DO_NOTHING,
            db_constraint=False,
            db_index=False,  # the (pgh_obj, pgh_id) index serves lookups by object
            related_name=related_name,
        )
    if obj_fk is not None:
        class_attrs["pgh_obj"] = obj_fk
    if context_fk is UNSET:
        context_fk = context_field()
    if context_fk is not None:
        class_attrs["pgh_context"] = context_fk

    meta = {**(meta or {}), "app_label": app_label, "abstract": abstract}
    class_attrs["Meta"] = type("Meta", (), meta)
    class_attrs["pgh_tracked_model"] = tracked_model
    class_attrs.update(attrs or {})

    event_model = type(model_name, (base_class,), class_attrs)
    if not abstract:
        setattr(sys.modules[module], model_name, event_model)
    return event_model


def get_event_model(
    model: type[models.Model],
    *events: events.Event,
    fields: list[str] | None = None,
    exclude: list[str] | None = None,
    obj_fk: models.ForeignKey | None = UNSET,
    context_fk: models.ForeignKey | None = UNSET,
    related_name: str | None = None,
    name: str | None = None,
    app_label: str | None = None,
    abstract: bool = True,
    mask: list[str] | None = None,
) -> type[Event]:
    """An event model for ``model`` to subclass (abstract by default).

    Use it instead of :func:`track` to declare the event model yourself, for
    example to add indexes or methods::

        class ProductEvent(audit_stream.get_event_model(Product, audit_stream.Snapshot())):
            class Meta:
                indexes = [models.Index(fields=["pgh_created_at"])]

    The arguments are those of :func:`track`.
    """
    from audit_stream.event import Event  # models: not before apps are ready

    event_model = create_event_model(
        Event,
        model,
        fields=fields,
        exclude=exclude,
        obj_fk=obj_fk,
        context_fk=context_fk,
        abstract=abstract,
        related_name=related_name,
        name=name,
        app_label=app_label,
        attrs={"pgh_events": events or _default_events(), "pgh_mask": tuple(mask or ())},
    )
    concrete = model._meta.concrete_model._meta.local_concrete_fields
    for field_name in mask or ():
        if not any(field_name in (f.name, f.attname) for f in concrete):
            registry.problem(
                event_model._meta.label,
                f"{model._meta.label} has no field {field_name!r} (in mask= of its history model).",
                "Choose among: " + ", ".join(sorted(f.name for f in concrete)) + ".",
                "audit_stream.E009",
            )
    return event_model


def _default_events() -> tuple[events.Event, ...]:
    return (events.Snapshot(), events.BeforeDelete())


def track(
    *events: events.Event,
    fields: list[str] | None = None,
    exclude: list[str] | None = None,
    obj_fk: models.ForeignKey | None = UNSET,
    context_fk: models.ForeignKey | None = UNSET,
    related_name: str | None = None,
    model_name: str | None = None,
    app_label: str | None = None,
    m2m_fields: list[str] | None = None,
    mask: list[str] | None = None,
):
    """Record the history of a model in a generated event model.

    Usage::

        @audit_stream.track(audit_stream.Snapshot(), audit_stream.BeforeDelete())
        class Product(models.Model):
            ...

        # A model of another app: the history lives in one of yours.
        audit_stream.track(app_label="accounts")(User)

    Args:
        *events: What to record. :class:`~audit_stream.DatabaseEvent` subclasses
            are recorded by triggers on every write path; plain
            :class:`~audit_stream.Event` labels are created with
            :func:`create_event`. Defaults to ``Snapshot()`` and ``BeforeDelete()``.
        fields: The fields to record; all concrete fields when omitted.
        exclude: The fields not to record, instead of ``fields``.
        obj_fk: The foreign key to the tracked object (``None``: none).
        context_fk: The foreign key to the context (``None``: none).
        related_name: The related name on the tracked model (default ``"event"``).
        model_name: The event model's name (default ``<Model>Event``).
        app_label: The app of the event model and its migrations.
        m2m_fields: Many-to-many fields whose set is recorded at every change
            (``add``, ``remove``, ``clear``, ``set``, raw SQL on the through
            table), in one more event model per field (:mod:`audit_stream.m2m`).
        mask: Fields recorded in clear in the event table but shown masked
            everywhere else: ``Change``, webhook and sink payloads, dashboard,
            admin history (:mod:`audit_stream.masking`).
    """

    def _wrap(model: M) -> M:
        get_event_model(
            model,
            *events,
            fields=fields,
            exclude=exclude,
            obj_fk=obj_fk,
            context_fk=context_fk,
            related_name=related_name,
            name=model_name,
            app_label=app_label,
            abstract=False,
            mask=mask,
        )
        if m2m_fields:
            track_m2m(model, list(m2m_fields), app_label=app_label)
        return model

    return _wrap


def setup_event_model(event_model: type[Event]) -> None:
    """Finish a concrete event model: index, triggers, labels (on ``class_prepared``)."""
    meta = event_model._meta
    tracked = event_model.pgh_tracked_model
    if meta.abstract or meta.proxy or not meta.managed or tracked is None:
        return

    registry.register(event_model)
    field_names = {f.name for f in meta.concrete_fields}
    tracked_attnames = {f.attname for f in tracked._meta.concrete_fields}
    event_model._pgh_tracked_fields = frozenset(
        f.attname
        for f in meta.concrete_fields
        if f.attname in tracked_attnames and not f.name.startswith("pgh_")
    )
    event_model._pgh_has_obj = "pgh_obj" in field_names or "pgh_obj_id" in field_names
    obj_field = "pgh_obj" if "pgh_obj" in field_names else "pgh_obj_id"
    event_model._pgh_has_context = "pgh_context" in field_names
    event_model._pgh_key = hashlib.sha1(meta.label_lower.encode()).hexdigest()[:6]

    if event_model._pgh_has_obj and not any(
        list(index.fields) == [obj_field, "pgh_id"] for index in meta.indexes
    ):
        index = models.Index(
            fields=[obj_field, "pgh_id"],
            name=f"{meta.model_name[:17]}_{event_model._pgh_key}_obj",
        )
        meta.indexes = [*meta.indexes, index]
        meta.original_attrs["indexes"] = meta.indexes

    # The fold and its idle check read events by writing transaction
    # (audit_stream.stream.unfolded). A b-tree answers "any event past this
    # xid?" in a few pages whatever the table's size; a BRIN index (used
    # before) needed vacuum to summarise new pages, and rechecked every row of
    # the unsummarised ones on each probe. xids grow with the table, so each
    # insert lands on the index's rightmost page.
    if not any(list(index.fields) == ["pgh_xid"] for index in meta.indexes):
        meta.indexes = [
            *meta.indexes,
            models.Index(fields=["pgh_xid"], name=f"{meta.model_name[:17]}_{event_model._pgh_key}_xid"),
        ]
        meta.original_attrs["indexes"] = meta.indexes

    target = _trigger_target(event_model)
    seen: set[str] = set()
    for event in event_model.pgh_events:
        if not isinstance(event, events.Event):
            raise TypeError(
                f"{meta.label}: {event!r} is not an audit_stream event (e.g. audit_stream.Snapshot())."
            )
        if event.label in seen:
            registry.problem(
                meta.label,
                f"{meta.label} declares the event label {event.label!r} twice.",
                "Give each event of a model its own label, e.g. AfterUpdate('price_changed', condition=...).",
                "audit_stream.E004",
            )
            continue
        seen.add(event.label)
        _labels[(tracked, event.label)] = event_model
        if isinstance(event, events.DatabaseEvent):
            # Most events trigger on the tracked table; an m2m event on its through table.
            trigger_target = getattr(event, "trigger_target", None)
            try:
                pgtrigger.register(*event.get_triggers(event_model))(
                    trigger_target(event_model) if trigger_target else target
                )
            except ValueError as exc:
                registry.problem(
                    meta.label,
                    str(exc),
                    "Fix the event declaration.",
                    "audit_stream.E005",
                )

    if config.append_only():
        pgtrigger.register(triggers.AppendOnly())(event_model)


def _trigger_target(event_model: type[Event]) -> type[models.Model]:
    """The model the triggers are declared on, which decides where their migrations go.

    The tracked model itself when it lives in the event model's app; otherwise
    a proxy of it in the event model's app, so that tracking a third-party
    model (``auth.User``) creates migrations in your app, not in theirs.
    """
    tracked = event_model.pgh_tracked_model
    app_label = event_model._meta.app_label
    if tracked._meta.app_label == app_label:
        return tracked
    name = f"{event_model.__name__}Tracking"
    module = sys.modules[event_model.__module__]
    proxy = getattr(module, name, None)
    if proxy is None:
        proxy = type(
            name,
            (tracked,),
            {
                "__module__": event_model.__module__,
                "Meta": type(
                    "Meta",
                    (),
                    {"proxy": True, "app_label": app_label, "auto_created": False},
                ),
            },
        )
        setattr(module, name, proxy)
    return proxy


def create_event(obj: models.Model, *, label: str, using: str = "default") -> models.Model:
    """Record an event for ``obj`` now, with the current context.

    The event holds the object's row as it is in the database (save the
    object first). It is written by a function the owner role installed
    (:func:`audit_stream.triggers.create_event_function`), so the
    application's runtime role needs no privilege on the event table.

    Args:
        obj: The tracked object, already saved.
        label: A label declared for the object's model (``Event("shipped")``).
        using: The database alias.

    Raises:
        ValueError: If no event model of the object's model declares ``label``.

    Returns:
        The saved event.
    """
    model = type(obj)._meta.concrete_model
    event_model = _labels.get((model, label))
    if event_model is None:
        known = sorted(lbl for (m, lbl) in _labels if m is model)
        raise ValueError(
            f'"{label}" is not a registered event for model {model._meta.object_name} ({model._meta.label})'
            + (f"; its labels are: {', '.join(known)}." if known else "; it has no tracked events.")
            + " Declare it with audit_stream.Event(label) in track()."
        )
    current = _current()
    context_id = metadata = None
    if event_model._pgh_has_context and current is not None:
        context_id, metadata = str(current.id), _serialize(current.metadata)
    with connections[using].cursor() as cursor:
        cursor.execute(
            f"SELECT {triggers.create_event_function_name(event_model)}(%s, %s, %s, %s)",
            [label, keys.object_id(model, obj.pk), context_id, metadata],
        )
        pgh_id = cursor.fetchone()[0]
    return event_model._default_manager.using(using).get(pgh_id=pgh_id)


def install_create_event_functions(using: str = "default", **kwargs: Any) -> None:
    """(Re)create every event model's manual-event function (on ``post_migrate``).

    Runs as the role that ran ``migrate`` (the owner), for the event models
    whose table exists on ``using``.
    """
    from django.db import router

    connection = connections[using]
    if connection.vendor != "postgresql":
        return
    with connection.cursor() as cursor:
        for event_model in sorted(set(registry.event_models.values()), key=lambda m: m._meta.label):
            if not router.allow_migrate_model(using, event_model):
                continue
            table = triggers.qualified(event_model._meta.db_table)
            cursor.execute("SELECT to_regclass(%s) IS NOT NULL", [table])
            if not cursor.fetchone()[0]:
                continue
            tracked = event_model.pgh_tracked_model._meta.concrete_model
            labels = sorted(lbl for (m, lbl), em in _labels.items() if em is event_model)
            pk_type = tracked._meta.pk.db_type(connection)
            cursor.execute(triggers.create_event_function(event_model, labels, pk_type))
