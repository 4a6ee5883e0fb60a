"""History entries as the admin shows them: who, what changed (old and new, as a person reads them), actions.

Masked fields (:mod:`audit_stream.masking`) show the mask; foreign keys show
their objects; many-to-many changes what left and joined the set.
"""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.urls import reverse

from audit_stream import events, masking, registry
from audit_stream import revert as _revert
from audit_stream.history.related import m2m_event_model
from audit_stream.history.states import source_for
from audit_stream.models import RowLog

__all__ = ["Display", "as_of_fields", "entries", "event_model_links", "masked_fields", "shown_value"]


def event_model_links(model, object_id):
    """(name, URL) of each event model's changelist filtered to the object."""
    links = []
    for event_model in registry.event_models_for(model):
        if not event_model._pgh_has_obj:
            continue
        try:
            url = reverse(f"admin:{event_model._meta.app_label}_{event_model._meta.model_name}_changelist")
        except Exception:
            continue
        links.append((event_model._meta.verbose_name_plural, f"{url}?pgh_obj__exact={object_id}"))
    return links


class Display:
    """Shows recorded values as a person reads them: foreign keys as their objects."""

    def __init__(self, model, value_maps):
        self.related = {}
        for field in model._meta.concrete_fields:
            if not field.is_relation:
                continue
            ids = {vm.get(field.attname) for vm in value_maps} - {None}
            if ids:
                target = field.related_model._default_manager.in_bulk(list(ids))
                self.related[field.attname] = {str(k): v for k, v in target.items()}

    def show(self, field, value):
        if value is None:
            return "—"
        if field.is_relation:
            obj = self.related.get(field.attname, {}).get(str(value))
            return str(obj) if obj is not None else f"{value} (deleted)"
        if field.choices:
            return dict(field.flatchoices).get(value, value)
        return value


def _diff(row, masked: set[str]) -> dict:
    """The row's diff; for an object's first event (``pgh_diff`` is None) every value it recorded.

    Masked columns show the mask: ``AggregateEvent`` masks them in SQL, the row
    log's entries (read from the log itself) are masked here.
    """
    if row.event_model is RowLog:
        return masking.mask_pairs(row.pgh_diff, masked)
    if row.pgh_diff is not None:
        return row.pgh_diff
    return {column: [None, value] for column, value in (row.pgh_data or {}).items()}


def _masked_columns(model, row) -> set[str]:
    """The columns a history row of ``model`` shows masked (their values are the mask, not the field's)."""
    if row.event_model is RowLog:
        return set(masking.table_columns(model))
    return set(masking.columns_of(row.event_model))


def masked_fields(model) -> set[str]:
    """The columns of ``model`` shown masked (:mod:`audit_stream.masking`)."""
    return masking.model_columns(model)


def shown_value(display, field, value, masked: set[str]):
    """A recorded value as shown: the mask for a masked column, else as :class:`Display` shows it."""
    if field.column in masked:
        return "—" if value is None else masking.mask_value(value)
    return display.show(field, value)


def as_of_fields(past):
    """(field name, value) of an as-of instance: relations as of the same moment, sets as lists."""
    fields = []
    masked = masked_fields(type(past))
    for field in past._meta.concrete_fields:
        if field.column in masked:
            value = getattr(past, field.attname)
            fields.append((field.verbose_name, "—" if value is None else masking.mask_value(value)))
            continue
        value = getattr(past, field.name) if field.is_relation else getattr(past, field.attname)
        if field.choices and not field.is_relation:
            value = dict(field.flatchoices).get(value, value)
        fields.append((field.verbose_name, "—" if value is None else value))
    for field in past._meta.many_to_many:
        if m2m_event_model(type(past), field.name) is not None:
            fields.append((field.verbose_name, ", ".join(map(str, getattr(past, field.name).all())) or "—"))
    return fields


def _can_show_as_of(model) -> bool:
    try:
        source_for(model)
    except ValueError:
        return False
    return True


def _m2m_diff(field, old, new):
    """A many-to-many change as two cells: what left the set, what joined it (by name)."""
    old, new = set(old or []), set(new or [])
    members = field.related_model._default_manager.in_bulk(list(old | new))

    def names(keys):
        return ", ".join(f'"{members.get(k, k)}"' for k in sorted(keys, key=str))

    removed, added = old - new, new - old
    minus = "\u2212"  # the minus sign, as in the "tags: + \"red\", \u2212 \"blue\""
    return (f"{minus} {names(removed)}" if removed else ""), (f"+ {names(added)}" if added else "")


def entries(model, rows, obj, may_change, opts, object_id):
    """History rows ready for the template: who, what changed (field, old, new), actions."""
    by_column = {f.column: f for f in model._meta.concrete_fields}
    m2m = {f.name: f for f in model._meta.many_to_many}
    as_of_ok = _can_show_as_of(model)
    value_maps = []
    masked = {id(row): _masked_columns(model, row) for row in rows}
    diffs = {id(row): _diff(row, masked[id(row)]) for row in rows}
    for row in rows:
        shown = {c: v for c, v in diffs[id(row)].items() if c in by_column and c not in masked[id(row)]}
        value_maps.append({by_column[c].attname: v[0] for c, v in shown.items()})
        value_maps.append({by_column[c].attname: v[1] for c, v in shown.items()})
    display = Display(model, value_maps)
    user_ids = {r.pgh_context.metadata.get("user") for r in rows if r.pgh_context} - {None}
    users = get_user_model()._default_manager.in_bulk([u for u in user_ids if isinstance(u, int)])
    entries = []
    for row in rows:
        metadata = dict(row.pgh_context.metadata) if row.pgh_context else {}
        user = metadata.pop("user", None)
        diff = []
        for column, (old, new) in diffs[id(row)].items():
            field = by_column.get(column)
            if field is not None and column in masked[id(row)]:
                diff.append((field.verbose_name, "—" if old is None else old, "—" if new is None else new))
                continue
            if field is None and column in m2m and getattr(row.event_model, "_pgh_m2m_field", None) == column:
                diff.append((m2m[column].verbose_name, *_m2m_diff(m2m[column], old, new)))
                continue
            if field is None:
                continue
            old, new = (field.to_python(v) if v is not None else None for v in (old, new))
            diff.append((field.verbose_name, display.show(field, old), display.show(field, new)))
        key = f"{row.pgh_table}:{row.pgh_id}"
        revertible = _revert.can_revert(row.event_model)
        entries.append(
            {
                "row": row,
                "context_url": reverse("admin:audit_stream_context_change", args=[row.pgh_context_id])
                if row.pgh_context_id
                else None,
                "user": users.get(user, user),
                "metadata": metadata,
                "diff": diff,
                "revert_url": reverse(
                    f"admin:{opts.app_label}_{opts.model_name}_revert", args=[object_id, key]
                )
                if obj is not None and may_change and revertible
                else None,
                "restore_url": reverse(
                    f"admin:{opts.app_label}_{opts.model_name}_restore", args=[object_id, key]
                )
                if obj is None and may_change and revertible
                else None,
                "as_of_url": reverse(f"admin:{opts.app_label}_{opts.model_name}_as_of", args=[object_id, key])
                if as_of_ok and row.pgh_label not in _row_delete_labels(row)
                else None,
            }
        )
    return entries


def _row_delete_labels(row) -> set[str]:
    if row.event_model is RowLog:
        return {"delete"}
    return set(events.delete_labels(row.event_model))
