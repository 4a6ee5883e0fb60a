"""The dashboard's pages, its JSON and Prometheus endpoints, and its two actions.

Every view is guarded by :func:`~audit_stream.dashboard.access.dashboard_view`
(the metrics endpoint also accepts a bearer token). Actions are POSTs checked
by Django's CSRF protection, need the change permission on webhook messages,
and redirect back (post/redirect/get). A model's data is shown only to users
who may view that model (:mod:`audit_stream.dashboard.access`).
"""

from __future__ import annotations

import functools
from datetime import timedelta
from pathlib import Path

from django.apps import apps
from django.contrib import messages
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied
from django.core.serializers.json import DjangoJSONEncoder
from django.db.models import F, Func, TextField
from django.http import FileResponse, Http404, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.templatetags.static import static
from django.urls import reverse
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.csrf import csrf_protect
from django.views.decorators.http import require_POST, require_safe

from audit_stream import exact
from audit_stream.dashboard import access, charts, formats, forms, metrics, queries
from audit_stream.dashboard import sinks as sink_figures
from audit_stream.dashboard.access import dashboard_view, token_or_dashboard_view
from audit_stream.sinks import delivery as sink_delivery
from audit_stream.sinks.models import Sink, SinkMessage
from audit_stream.webhooks import delivery
from audit_stream.webhooks.models import WebhookEndpoint, WebhookMessage

STYLESHEET = Path(__file__).resolve().parent.parent / "static" / "audit_stream" / "dashboard.css"
#: Seconds between reloads of the overview page.
REFRESH_SECONDS = 10


def stylesheet_url() -> str:
    """The dashboard's stylesheet: through staticfiles when installed, else served by :func:`stylesheet`."""
    if apps.is_installed("django.contrib.staticfiles"):
        return static("audit_stream/dashboard.css")
    return reverse("audit_stream:stylesheet")


def reads(view):
    """Run a page's queries, and its rendering, in one read transaction (see :func:`queries.reading`)."""

    @functools.wraps(view)
    def wrapper(request, *args, **kwargs):
        with queries.reading():
            return view(request, *args, **kwargs)

    return wrapper


def _render(request, template: str, context: dict, *, section: str) -> HttpResponse:
    """Render now, inside the page's read transaction."""
    context = {
        "section": section,
        "stylesheet_url": stylesheet_url(),
        "may_act": access.can_act(request.user),
        **context,
    }
    return render(request, f"audit_stream/dashboard/{template}", context)


def _back(request, default: str):
    """Redirect to ``?next=`` (or the POSTed ``next``) if it is a safe local URL, else ``default``."""
    target = request.POST.get("next") or request.GET.get("next")
    if target and url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return redirect(target)
    return redirect(default)


# --------------------------------------------------------------------------- overview


@require_safe
@dashboard_view
@reads
def overview(request):
    """The stream at a glance: backlog and lag per table, throughput, latency, processes."""
    data = queries.overview()
    chart = charts.bar_chart(
        data.throughput.minutes, unit="events", title="Events folded per minute, last 60 minutes"
    )
    return _render(
        request,
        "overview.html",
        {
            "overview": data,
            "chart": chart,
            "refresh_seconds": REFRESH_SECONDS,
            "throughput_total": formats.count(data.throughput.total),
            "throughput_peak": formats.count(data.throughput.peak),
            "lane_stalled_after": formats.duration(queries.LANE_STALLED_SECONDS),
        },
        section="overview",
    )


@require_safe
@dashboard_view
@reads
def overview_json(request):
    """The overview's figures as JSON (times in ISO 8601, durations in seconds or ms as named)."""
    return JsonResponse(queries.overview().as_dict(), encoder=DjangoJSONEncoder)


@require_safe
@token_or_dashboard_view
def prometheus_metrics(request):
    """Prometheus exposition: see :mod:`audit_stream.dashboard.metrics`."""
    body, content_type = metrics.render(request.headers.get("Accept", ""))
    return HttpResponse(body, content_type=content_type)


# --------------------------------------------------------------------------- webhooks


@require_safe
@dashboard_view
@reads
def webhooks(request):
    """Every endpoint's health and queue."""
    return _render(
        request,
        "webhooks.html",
        {
            "endpoints": queries.endpoint_health(),
            "total_messages": queries.estimate_rows("audit_stream_webhookmessage"),
        },
        section="webhooks",
    )


@require_safe
@dashboard_view
@reads
def endpoint(request, pk: int):
    """One endpoint: its health, its messages (filtered, paginated) and the replay of dead ones."""
    found = queries.endpoint_health(pk)
    if not found:
        raise Http404("No such webhook endpoint.")
    health = found[0]
    filters = forms.MessageFilterForm(request.GET or None)
    criteria = filters.cleaned_data if filters.is_valid() else {}
    status = criteria.get("status")
    page = queries.message_page(
        pk,
        statuses=[status] if status else None,
        since=criteria.get("since"),
        until=criteria.get("until"),
        before=request.GET.get("before"),
    )
    query = request.GET.copy()
    query.pop("before", None)
    replay_form = forms.ReplayDeadForm(initial={"since": timezone.localtime() - timedelta(days=1)})
    return _render(
        request,
        "endpoint.html",
        {
            "health": health,
            "endpoint": health.endpoint,
            "filters": filters,
            "page": page,
            "filter_query": query.urlencode(),
            "replay_form": replay_form,
        },
        section="webhooks",
    )


@require_POST
@csrf_protect
@dashboard_view
def replay_dead(request, pk: int):
    """Replay every dead message of an endpoint created since the posted time (change permission)."""
    if not access.can_act(request.user):
        raise PermissionDenied
    endpoint = get_object_or_404(WebhookEndpoint, pk=pk)
    form = forms.ReplayDeadForm(request.POST)
    if form.is_valid():
        count = delivery.replay_failed(endpoint, form.cleaned_data["since"])
        messages.success(request, f"Replaying {count} dead message(s) of {endpoint}.", fail_silently=True)
    else:
        messages.error(request, "Give the time from which to replay dead messages.", fail_silently=True)
    return _back(request, reverse("audit_stream:endpoint", args=[endpoint.pk]))


# --------------------------------------------------------------------------- sinks


@require_safe
@dashboard_view
@reads
def sinks(request):
    """Every sink's queue, lifetime counts and last error."""
    return _render(request, "sinks.html", {"sinks": sink_figures.sink_health()}, section="sinks")


@require_safe
@dashboard_view
@reads
def sink(request, pk: int):
    """One sink: its figures, its newest messages (``?status=``: of one status), replaying its dead ones."""
    found = sink_figures.sink_health(pk)
    if not found:
        raise Http404("No such sink.")
    status = request.GET.get("status")
    if status not in {s for s, _ in SinkMessage.STATUSES}:
        status = None
    context = {
        "health": found[0],
        "sink": found[0].sink,
        "status": status,
        "statuses": [s for s, _ in SinkMessage.STATUSES],
        "recent": sink_figures.recent_messages(pk, status),
        "may_replay": access.can_replay_sinks(request.user),
    }
    return _render(request, "sink.html", context, section="sinks")


@require_POST
@csrf_protect
@dashboard_view
def replay_sink_dead(request, pk: int):
    """Make every dead message of a sink due again (the change permission on sink messages)."""
    if not access.can_replay_sinks(request.user):
        raise PermissionDenied
    found = get_object_or_404(Sink, pk=pk)
    count = sink_delivery.replay(found.pk)
    messages.success(request, f"Replaying {count} dead message(s) of {found.name}.", fail_silently=True)
    return _back(request, reverse("audit_stream:sink", args=[found.pk]))


@require_safe
@dashboard_view
@reads
def message(request, pk):
    """One message: its payload (exactly as stored, to users who may view its model) and every attempt."""
    found = get_object_or_404(
        WebhookMessage.objects.select_related("endpoint").annotate(
            payload_text=Func(F("payload"), function="jsonb_pretty", output_field=TextField())
        ),
        pk=pk,
    )
    model = _message_model(found)
    hidden = model if model and not access.may_see_model(request.user, model) else None
    return _render(
        request,
        "message.html",
        {
            "message": found,
            "endpoint": found.endpoint,
            "attempts": queries.attempts(found),
            "payload_hidden_model": hidden,
        },
        section="webhooks",
    )


def _message_model(message: WebhookMessage) -> str | None:
    """The model whose data a message carries (``None``: a test message)."""
    if message.event_type == "audit_stream.test":
        return None
    data = message.payload.get("data") if isinstance(message.payload, dict) else None
    model = data.get("model") if isinstance(data, dict) else None
    return model if isinstance(model, str) else message.event_type.rpartition(".")[0]


@require_POST
@csrf_protect
@dashboard_view
def replay_message(request, pk):
    """Deliver one message again, from a fresh retry schedule (change permission)."""
    if not access.can_act(request.user):
        raise PermissionDenied
    found = get_object_or_404(WebhookMessage, pk=pk)
    delivery.replay([found])
    messages.success(request, f"Replaying {found.webhook_id}.", fail_silently=True)
    return _back(request, reverse("audit_stream:message", args=[found.pk]))


# --------------------------------------------------------------------------- retention


@require_safe
@dashboard_view
@reads
def retention(request):
    """The retention policies in force, the last runs, and the next scheduled one."""
    return _render(request, "retention.html", {"retention": queries.retention()}, section="retention")


# --------------------------------------------------------------------------- changes


def _user_filter(text: str) -> object:
    """A context's ``user`` from the filter box: digits are a pk; a known username, its pk; else the text."""
    text = text.strip()
    if not text:
        return None
    if text.isdigit():
        return int(text)
    User = get_user_model()
    pk = User._default_manager.filter(**{User.USERNAME_FIELD: text}).values_list("pk", flat=True).first()
    return pk if pk is not None else text


def diff_rows(diff_text: str | None) -> list[dict]:
    """A diff (``{field: [old, new]}``, as JSON text) as table rows; ``None`` stays ``None`` (shown as null).

    Numbers are parsed as decimals, so ``10.00`` reads ``10.00``, as stored.
    """
    diff = exact.loads(diff_text) if diff_text else {}
    rows = []
    for name in sorted(diff):
        old, new = [*diff[name], None, None][:2]
        rows.append(
            {
                "field": name,
                "old": None if old is None else formats.value(old),
                "new": None if new is None else formats.value(new),
            }
        )
    return rows


@require_safe
@dashboard_view
@reads
def changes(request):
    """The change feed, newest first, with diffs; by model, object id, label and user.

    Only the changes of models the user may view (see :func:`access.visible_models`).
    """
    known = queries.tracked_models()
    visible = access.visible_models(request.user, known)
    filters = forms.ChangeFilterForm(request.GET or None, models=known if visible is None else visible)
    criteria = filters.cleaned_data if filters.is_valid() else {}
    before = request.GET.get("before", "")
    page = queries.changes(
        model=criteria.get("model", ""),
        object_id=criteria.get("object_id", "").strip(),
        label=criteria.get("label", ""),
        user=_user_filter(criteria.get("user", "")),
        before=int(before) if before.isdigit() else None,
        visible=visible,
    )
    for change in page.items:
        change.diff_rows = diff_rows(change.diff_text)
    query = request.GET.copy()
    query.pop("before", None)
    return _render(
        request,
        "changes.html",
        {
            "filters": filters,
            "page": page,
            "filter_query": query.urlencode(),
            "total_changes": queries.estimate_rows("audit_stream_change"),
            "hidden_models": visible is not None and len(visible) < len(known),
        },
        section="changes",
    )


# --------------------------------------------------------------------------- assets


@require_safe
def stylesheet(request):
    """The stylesheet, for projects without ``django.contrib.staticfiles`` (it holds nothing private)."""
    response = FileResponse(STYLESHEET.open("rb"), content_type="text/css; charset=utf-8")
    response["Cache-Control"] = "max-age=300"
    return response
