"""The admin's "Undo this request": a confirmation page on a context, then the undo.

``ContextAdmin`` (in :mod:`audit_stream.admin.logs`) mixes in :class:`UndoContextMixin`.
The page is a dry run (:func:`audit_stream.undo` with ``dry_run=True``) that
lists every change the undo would make, every conflict and every refusal, and
the permissions the user lacks: the change permission on every model the undo
writes, with the delete permission where it deletes and the add permission
where it restores (tables without a model need a superuser). Confirming runs
the undo; without a permission, nothing is changed and the page says which
one is missing.
"""

from __future__ import annotations

import uuid

from django.apps import apps
from django.contrib import messages
from django.contrib.admin.utils import quote
from django.contrib.auth import get_permission_codename
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import NoReverseMatch, path, reverse

from audit_stream import masking
from audit_stream.history.undo import UndoError, UndoPlan, undo

__all__ = ["UndoContextMixin", "missing_permissions"]

# What each action needs besides the change permission.
_EXTRA_PERMISSION = {"delete": "delete", "restore": "add", "update": None}


def missing_permissions(user, plan: UndoPlan) -> list[str]:
    """The permissions ``user`` lacks to carry out ``plan``, as ``"app_label.codename"``."""
    missing = []
    for label, actions in sorted(plan.actions_by_model().items()):
        model = _model(label)
        if model is None:
            if not user.is_superuser:
                missing.append(f"superuser (the table {label} has no model)")
            continue
        needed = ["change", *sorted({_EXTRA_PERMISSION[a] for a in actions} - {None})]
        for action in needed:
            name = f"{model._meta.app_label}.{get_permission_codename(action, model._meta)}"
            if not user.has_perm(name):
                missing.append(name)
    return missing


def _model(label: str):
    try:
        return apps.get_model(label)
    except (LookupError, ValueError):
        return None


class UndoContextMixin:
    """Adds ``<context id>/undo/`` to the ``Context`` admin."""

    undo_confirmation_template = "audit_stream/admin/undo_confirmation.html"

    def get_urls(self):
        info = (self.opts.app_label, self.opts.model_name)
        return [
            path(
                "<path:object_id>/undo/",
                self.admin_site.admin_view(self.undo_view),
                name="{}_{}_undo".format(*info),
            ),
            *super().get_urls(),
        ]

    def undo_view(self, request, object_id):
        """The confirmation page (GET), or the undo (POST with ``confirm``)."""
        try:
            context_id = uuid.UUID(object_id)
        except ValueError:
            raise Http404("Not a context id.") from None
        if not self.has_view_permission(request):
            raise PermissionDenied
        if not self.model.objects.filter(pk=context_id).exists():
            raise Http404(f"No context {context_id}.")
        data = request.POST if request.method == "POST" else request.GET
        force, partial = data.get("force") == "on", data.get("partial") == "on"
        change_url = reverse(f"admin:{self.opts.app_label}_{self.opts.model_name}_change", args=[context_id])
        try:
            plan = undo(context_id, dry_run=True, force=force, partial=partial)
        except UndoError as exc:
            self.message_user(request, str(exc), messages.ERROR)
            return HttpResponseRedirect(change_url)
        missing = missing_permissions(request.user, plan)
        status = 200
        if request.method == "POST" and "confirm" in request.POST:
            if missing:
                status = 403  # the page below says which permission is missing
            elif not plan.blocked:
                try:
                    done = undo(context_id, force=force, partial=partial)
                except UndoError as exc:
                    self.message_user(request, str(exc), messages.ERROR)
                else:
                    counts = done.counts()
                    self.message_user(
                        request,
                        f"Undone: {counts['delete']} deleted, {counts['restore']} restored,"
                        f" {counts['update']} updated. The undo is itself recorded in context"
                        f" {done.context_id}.",
                    )
                    target = done.context_id or context_id
                    return HttpResponseRedirect(
                        reverse(f"admin:{self.opts.app_label}_{self.opts.model_name}_change", args=[target])
                    )
        context = {
            **self.admin_site.each_context(request),
            "title": f"Undo the request {context_id}?",
            "opts": self.opts,
            "context_id": context_id,
            "change_url": change_url,
            "plan": plan,
            "counts": plan.counts(),
            "rows": _rows(plan),
            "conflicts": plan.conflicts,
            "missing": missing,
            "force": force,
            "partial": partial,
            "offer_partial": any("partial=True" in r.reason for r in plan.refusals),
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, self.undo_confirmation_template, context, status=status)


def _rows(plan: UndoPlan) -> list[dict]:
    """Steps ready for the template, with a link to each object's admin page where there is one."""
    prefixes: dict[str, str | None] = {}
    rows = []
    for step in plan.steps:
        if step.model not in prefixes:
            prefixes[step.model] = _change_url_prefix(step.model)
        prefix = prefixes[step.model]
        exists = step.action in ("update", "nothing", "delete")
        url = f"{prefix}{quote(step.object_id)}/change/" if prefix and exists else None
        # The undo writes the recorded values; the page shows masked ones masked (audit_stream.masking).
        changes = masking.mask_changes(step.changes, masking.label_columns(step.model))
        rows.append({"step": step, "url": url, "changes": changes})
    return rows


def _change_url_prefix(label: str) -> str | None:
    model = _model(label)
    if model is None:
        return None
    try:
        return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist")
    except NoReverseMatch:
        return None
