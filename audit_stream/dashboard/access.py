"""Who may use the dashboard, act on it, and see which model's data.

Staff users with the ``audit_stream.view_dashboard`` permission (superusers
have every permission) see the stream's figures. Anonymous visitors are sent
to the admin's login page; anyone else logged in gets 403. Replaying messages
also needs ``audit_stream.change_webhookmessage``. A model's data (its changes,
the payloads of its webhook messages) is shown only to users with that model's
view or change permission, unless ``AUDIT_STREAM["DASHBOARD_SHOWS_ALL_MODELS"]``.

The Prometheus endpoint answers a scraper, never with a login page: a bearer
token equal to ``AUDIT_STREAM["METRICS_TOKEN"]``, or a dashboard session; 401
without either, 403 for a logged-in user without the permission.
"""

from __future__ import annotations

import functools

from django.apps import apps
from django.conf import settings
from django.contrib.auth import get_permission_codename
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.http import HttpResponse
from django.urls import NoReverseMatch, reverse
from django.utils.crypto import constant_time_compare
from django.views.decorators.cache import never_cache

from audit_stream import config

__all__ = [
    "ACT_PERMISSION",
    "PERMISSION",
    "can_act",
    "can_view",
    "dashboard_view",
    "login_url",
    "may_see_model",
    "token_or_dashboard_view",
    "visible_models",
]

PERMISSION = "audit_stream.view_dashboard"
#: Replaying messages changes them.
ACT_PERMISSION = "audit_stream.change_webhookmessage"


def can_view(user) -> bool:
    """Whether ``user`` may see the dashboard and act on it."""
    return bool(user.is_active and user.is_staff and user.has_perm(PERMISSION))


SINK_ACT_PERMISSION = "audit_stream.change_sinkmessage"


def can_replay_sinks(user) -> bool:
    """Whether ``user`` may replay sink messages from the dashboard."""
    return can_view(user) and user.has_perm(SINK_ACT_PERMISSION)


def can_act(user) -> bool:
    """Whether ``user`` may replay messages from the dashboard."""
    return can_view(user) and user.has_perm(ACT_PERMISSION)


def _model_permissions(label: str) -> list[str] | None:
    """The view and change permissions of the model ``Change.model`` calls ``label``; ``None``: no model."""
    try:
        model = apps.get_model(label)
    except (LookupError, ValueError):
        return None  # a logged table without a model: "schema.table"
    opts = model._meta
    return [f"{opts.app_label}.{get_permission_codename(action, opts)}" for action in ("view", "change")]


def may_see_model(user, label: str) -> bool:
    """Whether ``user`` may see the data of the model ``label`` (``"app_label.model"``)."""
    if config.dashboard_shows_all_models() or user.is_superuser:
        return True
    permissions = _model_permissions(label)
    return permissions is not None and any(user.has_perm(p) for p in permissions)


def visible_models(user, labels: list[str]) -> list[str] | None:
    """Of ``labels``, the models whose data ``user`` may see; ``None``: every model, known or not."""
    if config.dashboard_shows_all_models() or user.is_superuser:
        return None
    return [label for label in labels if may_see_model(user, label)]


def login_url() -> str:
    """The admin's login page, else ``settings.LOGIN_URL``."""
    try:
        return reverse("admin:login")
    except NoReverseMatch:
        return settings.LOGIN_URL


def dashboard_view(view):
    """Guard a view: anonymous -> login page (with ``?next=``), not allowed -> 403.

    Responses are never cached: they show live figures, to one user.
    """

    @functools.wraps(view)
    def wrapper(request, *args, **kwargs):
        if not request.user.is_authenticated:
            return redirect_to_login(request.get_full_path(), login_url())
        if not can_view(request.user):
            raise PermissionDenied
        return view(request, *args, **kwargs)

    return never_cache(wrapper)


def _metrics_token() -> str | None:
    # The config key is AUDIT_STREAM["METRICS_TOKEN"]; read directly so the
    # dashboard does not depend on a particular version of audit_stream.config.
    return getattr(settings, "AUDIT_STREAM", {}).get("METRICS_TOKEN") or None


def _bearer(request) -> str | None:
    scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
    return credentials.strip() if scheme.lower() == "bearer" else None


def token_or_dashboard_view(view):
    """A bearer token equal to ``METRICS_TOKEN`` (when one is set), or a dashboard session.

    Never a redirect to a login page a scraper cannot use: a wrong token or
    no credentials at all is 401 (with ``WWW-Authenticate``), a logged-in user
    without the dashboard permission 403.
    """

    @functools.wraps(view)
    def wrapper(request, *args, **kwargs):
        token, presented = _metrics_token(), _bearer(request)
        if token and presented is not None:
            if not constant_time_compare(presented, token):
                return _unauthorized("Invalid bearer token.")
            return view(request, *args, **kwargs)
        if not request.user.is_authenticated:
            return _unauthorized("Authentication required: a bearer token (METRICS_TOKEN) or a session.")
        if not can_view(request.user):
            return HttpResponse("Forbidden.\n", status=403, content_type="text/plain")
        return view(request, *args, **kwargs)

    return never_cache(wrapper)


def _unauthorized(message: str) -> HttpResponse:
    response = HttpResponse(message + "\n", status=401, content_type="text/plain")
    response["WWW-Authenticate"] = 'Bearer realm="audit_stream"'
    return response
