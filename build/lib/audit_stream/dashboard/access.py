"""Who may use the dashboard.

Staff users with the ``audit_stream.view_dashboard`` permission (superusers
have every permission). Anonymous visitors are sent to the admin's login page;
anyone else logged in gets 403. The Prometheus endpoint also accepts a bearer
token, ``AUDIT_STREAM["METRICS_TOKEN"]``, so a scraper needs no session.
"""

from __future__ import annotations

import functools

from django.conf import settings
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.http import HttpResponse
from django.urls import NoReverseMatch, reverse
from django.utils.crypto import constant_time_compare
from django.views.decorators.cache import never_cache

__all__ = ["PERMISSION", "can_view", "dashboard_view", "login_url", "token_or_dashboard_view"]

PERMISSION = "audit_stream.view_dashboard"


def can_view(user) -> bool:
    """Whether ``user`` may see the dashboard and act on it."""
    return bool(user.is_active and user.is_staff and user.has_perm(PERMISSION))


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
    """Like :func:`dashboard_view`, or a bearer token equal to ``METRICS_TOKEN`` when one is set.

    A request that presents a bearer token while one is configured is judged
    by the token alone: a wrong one is 401, never a redirect to a login page
    a scraper cannot use.
    """
    guarded = dashboard_view(view)

    @functools.wraps(view)
    def wrapper(request, *args, **kwargs):
        token, presented = _metrics_token(), _bearer(request)
        if token and presented is not None:
            if not constant_time_compare(presented, token):
                response = HttpResponse("Invalid bearer token.\n", status=401, content_type="text/plain")
                response["WWW-Authenticate"] = 'Bearer realm="audit_stream"'
                return response
            return never_cache(view)(request, *args, **kwargs)
        return guarded(request, *args, **kwargs)

    return wrapper
