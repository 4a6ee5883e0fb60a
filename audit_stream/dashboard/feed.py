"""The change feed on the dashboard: newest first, filtered by model, object, label and user, by keyset page.

Every filter is served by an index, so a page costs about its rows whatever
the feed's size: the primary key alone (``?before=`` continues below an id),
``(model, object_id, event_id)`` for an object, ``(label, created_at)`` for a
label, and ``(context, id)`` for a user: each of the user's contexts is one
ordered range of that index, and the page merges the newest of them
(:func:`_user_page`).
"""

from __future__ import annotations

from django.core.exceptions import EmptyResultSet
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.models import TextField
from django.db.models.functions import Cast

from audit_stream.dashboard import paging
from audit_stream.dashboard.paging import Page
from audit_stream.models import Change, Context
from audit_stream.webhooks import filters

__all__ = ["USER_CONTEXTS_INLINE", "changes", "event_labels", "tracked_models"]

#: Above this many contexts for one user, the change list filters with a subquery instead
#: (and walks the feed from the newest change).
USER_CONTEXTS_INLINE = 50_000


def tracked_models() -> list[str]:
    """``"app_label.model"`` of every tracked or logged model, as ``Change.model`` stores it."""
    return filters.known_models()


def event_labels() -> list[str]:
    """Every event label declared on a tracked model (and the row log's, when logging is on)."""
    return filters.known_labels()


# The ids of one page of the changes of some contexts (the user's), newest
# first. {filtered} is the feed with every other filter of the page applied
# (its columns: id, context_id; its parameters come first, twice).
#
# 1. Each context's newest change: one backward step into the context's range
#    of the (context_id, id) index (more if other filters skip changes).
# 2. A page of `limit` changes holds changes of at most `limit` contexts, and
#    only of those whose newest changes are the `limit` newest: a change of any
#    other context is older than `limit` changes, one of each of those. The
#    context ranked r has r - 1 changes newer than all of its own, so at most
#    `limit` - r + 1 of its changes can be on the page.
# 3. Those changes, each context's read backwards from its newest, merged and
#    cut to the page: at most limit * (limit + 1) / 2 rows whatever the feed's
#    size, plus one probe per context of the user.
#
# A context's range is written as a row comparison on (context_id, id), from
# (context, 0) to (context, the page's upper id), ordered by both columns:
# only that index answers it. Given "context_id = ... ORDER BY id DESC", the
# planner, which sees a few contexts with many changes each, walked the
# primary key backwards from the newest change, hoping to meet the context
# early (the whole feed, for a context with no change at all).
_RANGE = "(f.context_id, f.id) > ({context}, 0) AND (f.context_id, f.id) < ({context}, %s)"
_USER_PAGE_SQL = f"""
WITH newest AS MATERIALIZED (
    SELECT c.id AS context_id,
           (SELECT f.id FROM ({{filtered}}) AS f
            WHERE {_RANGE.format(context="c.id")}
            ORDER BY f.context_id DESC, f.id DESC
            LIMIT 1) AS top
    FROM unnest(%s::uuid[]) AS c(id)
), ranked AS (
    SELECT context_id, row_number() OVER (ORDER BY top DESC) AS rank
    FROM newest
    WHERE top IS NOT NULL
    ORDER BY top DESC
    LIMIT %s
)
SELECT page.id
FROM ranked
CROSS JOIN LATERAL (
    SELECT f.id FROM ({{filtered}}) AS f
    WHERE {_RANGE.format(context="ranked.context_id")}
    ORDER BY f.context_id DESC, f.id DESC
    LIMIT %s - ranked.rank + 1
) AS page
ORDER BY page.id DESC
LIMIT %s
"""
#: The upper bound of a first page: past every id.
_NO_UPPER = 2**63 - 1


def _user_contexts(user: object, using: str) -> list | None:
    """The ids of the contexts whose ``user`` is ``user`` (a user or its pk); ``None`` past the inline cap.

    Read through the index on ``metadata -> 'user'``.
    """
    pk = getattr(user, "pk", user)
    ids = list(
        Context.objects.using(using)
        .filter(metadata__user=pk)
        .values_list("id", flat=True)[: USER_CONTEXTS_INLINE + 1]
    )
    return None if len(ids) > USER_CONTEXTS_INLINE else ids


def _user_page(filtered, contexts: list, limit: int, before: int | None, using: str) -> list[int]:
    """The ids of the newest ``limit`` changes of ``filtered`` below ``before`` made in ``contexts``."""
    if not contexts:
        return []
    try:
        sql, params = filtered.order_by().values("id", "context_id").query.sql_with_params()
    except EmptyResultSet:  # a filter no change can pass (e.g. no visible model)
        return []
    query = _USER_PAGE_SQL.format(filtered=sql)
    with connections[using].cursor() as cursor:
        upper = _NO_UPPER if before is None else before
        cursor.execute(query, [*params, upper, contexts, limit, *params, upper, limit, limit])
        return [row[0] for row in cursor.fetchall()]


def changes(
    *,
    model: str = "",
    object_id: str = "",
    label: str = "",
    user: object = None,
    before: int | None = None,
    limit: int | None = None,
    visible: list[str] | None = None,
    using: str = DEFAULT_DB_ALIAS,
) -> Page:
    """The change feed, newest first (by ``id``), filtered, one keyset page.

    ``visible``: only changes of these models (``None``: every model), the ones
    the viewer may see (:func:`audit_stream.dashboard.access.visible_models`).

    An object id without a model is looked up in every tracked model, so the
    ``(model, object_id, event_id)`` index still serves it. Each change carries
    ``diff_text``, its diff as PostgreSQL prints it (numbers exact); the
    snapshot is not read.
    """
    limit = limit or paging.PAGE_SIZE
    filtered = Change.objects.using(using)
    if model:
        filtered = filtered.for_model(model)
    if object_id:
        filtered = filtered.filter(object_id=object_id)
        if not model:
            filtered = filtered.filter(model__in=tracked_models())
    if label:
        filtered = filtered.filter(label=label)
    if visible is not None:
        filtered = filtered.filter(model__in=visible)
    if before is not None:
        filtered = filtered.filter(id__lt=before)
    shown = (
        filtered.select_related("context")
        .defer("diff", "snapshot")
        .annotate(diff_text=Cast("diff", TextField()))
    )
    if user in (None, ""):
        items = list(shown.order_by("-id")[: limit + 1])
    else:
        contexts = _user_contexts(user, using)
        if contexts is None:  # a user of very many contexts: filtered by a subquery
            items = list(shown.by_user(user).order_by("-id")[: limit + 1])
        else:
            ids = _user_page(filtered, contexts, limit + 1, before, using)
            items = list(shown.filter(id__in=ids).order_by("-id")) if ids else []
    older = str(items[limit - 1].id) if len(items) > limit else None
    return Page(items=items[:limit], older=older, is_first=before is None)
