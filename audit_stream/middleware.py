"""Attach who and where to the changes a request makes.

``HistoryMiddleware`` opens an :func:`audit_stream.context` for requests that
write (``AUDIT_STREAM["MIDDLEWARE_METHODS"]``, by default POST, PUT, PATCH and
DELETE), with the user's primary key and the URL path. It works in both sync
(WSGI) and async (ASGI) stacks: the context lives in a ``contextvars`` variable,
so concurrent requests never see each other's.

Frameworks such as django-rest-framework authenticate in the view, after the
middleware ran. ``WSGIRequest`` and ``ASGIRequest`` update the context when
``request.user`` is set later, and the middleware switches every request it
records to them itself (as django-pghistory does): nothing to set in
``wsgi.py`` or ``asgi.py``, and Django's test client gets them too. A project
whose handler already uses its own request class gets that class with the
same behaviour mixed in.
"""

from __future__ import annotations

import functools
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.core.handlers import asgi, wsgi
from django.utils.functional import LazyObject

from audit_stream import config
from audit_stream.context import context

__all__ = ["ASGIRequest", "HistoryMiddleware", "WSGIRequest"]


def _user_id(user: Any) -> Any:
    if user is None or not getattr(user, "is_authenticated", False):
        return None
    return user.pk


class _LateUser:
    """Adds the user to the active context whenever ``request.user`` is assigned."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "user" and not isinstance(value, LazyObject):
            # AuthenticationMiddleware assigns a lazy object: leave it lazy
            # (the middleware reads it if the request writes). A real user
            # assigned by the view is recorded at once.
            context(user=_user_id(value))
        super().__setattr__(name, value)


class WSGIRequest(_LateUser, wsgi.WSGIRequest):
    """A WSGI request that updates the history context when ``request.user`` is set."""


class ASGIRequest(_LateUser, asgi.ASGIRequest):
    """An ASGI request that updates the history context when ``request.user`` is set."""


@functools.cache
def _late_user_class(request_class: type) -> type:
    """``request_class`` with :class:`_LateUser` mixed in (Django's own classes map to ours)."""
    if request_class is wsgi.WSGIRequest:
        return WSGIRequest
    if request_class is asgi.ASGIRequest:
        return ASGIRequest
    return type(request_class.__name__, (_LateUser, request_class), {"__module__": request_class.__module__})


def _see_late_user(request: Any) -> None:
    """Make ``request`` record a user assigned after this point (by the view)."""
    if not isinstance(request, _LateUser):
        request.__class__ = _late_user_class(type(request))


class HistoryMiddleware:
    """Records the user and the URL of requests that write, in the history context."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response
        self.methods = config.middleware_methods()
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    def get_context(self, request: Any) -> dict[str, Any]:
        """The metadata recorded for ``request``; override to add more."""
        return {"user": _user_id(getattr(request, "user", None)), "url": request.path}

    def __call__(self, request: Any) -> Any:
        if iscoroutinefunction(self):
            return self.__acall__(request)
        if request.method not in self.methods:
            return self.get_response(request)
        with context(**self.get_context(request)):
            _see_late_user(request)
            return self.get_response(request)

    async def __acall__(self, request: Any) -> Any:
        if request.method not in self.methods:
            return await self.get_response(request)
        from asgiref.sync import sync_to_async

        # Reading request.user may query the session: not on the event loop.
        metadata = await sync_to_async(self.get_context)(request)
        async with context(**metadata):
            _see_late_user(request)
            return await self.get_response(request)
