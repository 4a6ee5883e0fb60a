"""HistoryMiddleware and the late-user request classes, through real requests."""

import asyncio
import io

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from django.contrib.auth.models import AnonymousUser, User
from django.http import HttpResponse
from django.test import AsyncClient, RequestFactory

import audit_stream
from audit_stream.middleware import ASGIRequest, HistoryMiddleware, WSGIRequest
from audit_stream.models import Context
from tests.testapp.models import Product, ProductEvent

pytestmark = pytest.mark.django_db


@pytest.fixture
def ada():
    return User.objects.create_user("ada", password="pw")


def _context(name):
    event = ProductEvent.objects.get(name=name, pgh_label="snapshot")
    return event.pgh_context and event.pgh_context.metadata


def test_anonymous_post_records_the_url(client):
    assert client.post("/write/?name=a").status_code == 200
    assert _context("a") == {"user": None, "url": "/write/"}


def test_logged_in_post_records_the_user(client, ada):
    client.force_login(ada)
    client.post("/write/?name=a")
    assert _context("a") == {"user": ada.pk, "url": "/write/"}


@pytest.mark.parametrize("method", ["put", "patch", "delete"])
def test_other_writing_methods_are_recorded(client, method):
    getattr(client, method)(f"/write/?name={method}")
    assert _context(method)["url"] == "/write/"


def test_get_requests_are_not_given_a_context(client):
    client.get("/write/?name=a")
    assert _context("a") is None


def test_methods_are_configurable(client, settings):
    settings.AUDIT_STREAM = {"MIDDLEWARE_METHODS": ["GET"]}
    client.get("/write/?name=a")
    client.post("/write/?name=b")
    assert _context("a") == {"user": None, "url": "/write/"}
    assert _context("b") is None


def test_two_requests_in_a_row_on_one_connection_do_not_share_context(client, ada):
    client.force_login(ada)
    client.post("/write/?name=a")
    client.logout()
    client.post("/write/?name=b")
    client.get("/write/?name=c")
    first, second = (ProductEvent.objects.get(name=n).pgh_context_id for n in "ab")
    assert first != second
    assert _context("b") == {"user": None, "url": "/write/"}
    assert _context("c") is None


def _wsgi_request(path, method="POST"):
    environ = RequestFactory()._base_environ(PATH_INFO=path, REQUEST_METHOD=method, QUERY_STRING="")
    request = WSGIRequest(environ)
    request.user = AnonymousUser()
    return request


def test_wsgi_request_records_a_user_set_by_the_view(ada):
    """As django-rest-framework does: the view authenticates after the middleware ran."""

    def view(request):
        request.user = ada
        Product.objects.create(name="late")
        return HttpResponse()

    HistoryMiddleware(view)(_wsgi_request("/api/late/"))
    assert _context("late") == {"user": ada.pk, "url": "/api/late/"}


def test_a_user_set_by_the_view_is_recorded_with_nothing_but_the_middleware(client, ada):
    """Django's test client, no request_class in wsgi.py: the middleware switches the request itself."""
    client.post("/late-user/?as=ada&name=x")
    assert _context("x") == {"user": ada.pk, "url": "/late-user/"}


def test_a_user_set_by_an_async_view_is_recorded_with_nothing_but_the_middleware(ada):
    """The same through ASGI (AsyncClient): the request becomes an audit_stream ASGIRequest."""
    response = async_to_sync(AsyncClient().post)("/async-late-user/?as=ada&name=y")
    assert response.status_code == 200
    assert _context("y") == {"user": ada.pk, "url": "/async-late-user/"}


def test_a_projects_own_request_class_keeps_its_behaviour(ada):
    """A request of a custom subclass gets the late-user behaviour mixed in, not replaced."""
    from django.core.handlers.wsgi import WSGIRequest as DjangoWSGIRequest

    class ApiRequest(DjangoWSGIRequest):
        def api_version(self):
            return 2

    environ = RequestFactory()._base_environ(PATH_INFO="/api/", REQUEST_METHOD="POST", QUERY_STRING="")
    request = ApiRequest(environ)

    def view(request):
        request.user = ada
        Product.objects.create(name="custom")
        return HttpResponse(str(request.api_version()))

    assert HistoryMiddleware(view)(request).content == b"2"
    assert isinstance(request, ApiRequest)
    assert _context("custom") == {"user": ada.pk, "url": "/api/"}


def test_setting_the_user_outside_a_context_is_ignored(ada):
    request = _wsgi_request("/", method="GET")
    request.user = ada
    Product.objects.create(name="outside")
    assert _context("outside") is None


def test_asgi_request_records_a_user_set_by_the_view(ada):
    scope = {"type": "http", "method": "POST", "path": "/api/late/", "headers": [], "query_string": b""}
    request = ASGIRequest(scope, io.BytesIO())
    request.user = AnonymousUser()

    async def view(request):
        request.user = ada
        await sync_to_async(Product.objects.create)(name="late")
        return HttpResponse()

    async_to_sync(HistoryMiddleware(view))(request)
    assert _context("late") == {"user": ada.pk, "url": "/api/late/"}


def test_concurrent_async_requests_keep_their_contexts_apart(ada):
    """Interleaved ASGI requests on one event loop: each event carries its own request's context."""
    bob = User.objects.create_user("bob", password="pw")
    clients = [AsyncClient(), AsyncClient()]
    clients[0].force_login(ada)
    clients[1].force_login(bob)

    async def both():
        return await asyncio.gather(
            *(c.post(f"/async-write/?name=n{i}-{k}") for k in range(3) for i, c in enumerate(clients))
        )

    responses = async_to_sync(both)()
    assert [r.status_code for r in responses] == [200] * 6
    for k in range(3):
        for i, user in enumerate([ada, bob]):
            events = ProductEvent.objects.filter(name=f"n{i}-{k}")
            assert events.count() == 2  # insert and update
            assert {e.pgh_context.metadata["user"] for e in events} == {user.pk}
            assert events.values("pgh_context_id").distinct().count() == 1
    assert Context.objects.count() == 6


def test_middleware_context_is_the_one_views_extend(client):
    """audit_stream.context(...) called in a view adds to the request's context."""

    def view(request):
        audit_stream.context(reason="bulk fix")
        Product.objects.create(name="v")
        return HttpResponse()

    HistoryMiddleware(view)(_wsgi_request("/fix/"))
    assert _context("v") == {"user": None, "url": "/fix/", "reason": "bulk fix"}
