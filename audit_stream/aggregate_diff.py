"""``AggregateEvent.pgh_diff``, computed for the rows a query returns, each against its one previous event.

The aggregate's CTE (audit_stream.aggregate) lists an object's events; if it
computed each diff there (a window over the whole history), a page of 50 rows
of an object with 20,000 events would pay for 20,000 diffs. Instead the
query's own ``pgh_diff`` column is replaced by the expression below, in the
outermost SELECT: PostgreSQL evaluates expensive output expressions after its
Sort and LIMIT, so only the rows of the page are diffed, each by two lookups
of the ``(pgh_obj, pgh_id)`` index (the event, and the object's previous event
in the same table).

The diff is the Change feed's (``_audit_stream_diff``): ``{column: [old, new]}``
for the columns that differ from the previous event of the object in the
same event table (all of them for its first event), ``{column: [old, null]}``
for a delete event.
"""

from __future__ import annotations

__all__ = ["delete_labels", "diff_expression", "replace_diff_column"]

# Columns of an event row that are not the tracked object's state.
_PGH_COLUMNS = ["pgh_id", "pgh_created_at", "pgh_label", "pgh_xid", "pgh_obj_id", "pgh_context_id"]

# One event table's diff for the outer row `{row}` (its pgh_id): the event
# `c` against the object's previous event `p` in the same table (for event
# models without an object, the table's previous event).
_TABLE_DIFF = """
WHEN %s THEN (
    SELECT _audit_stream_diff(
        (SELECT to_jsonb(p) - %s::text[] FROM {table} AS p
         WHERE {same_object} p.pgh_id < c.pgh_id
         ORDER BY p.pgh_id DESC LIMIT 1),
        to_jsonb(c) - %s::text[],
        c.pgh_label = ANY(%s::text[]))
    FROM {table} AS c WHERE c.pgh_id = {event_id})"""


def delete_labels(event_model) -> list[str]:
    """The labels of ``event_model``'s events whose only operation is DELETE."""
    from audit_stream.events import DatabaseEvent

    return [
        e.label for e in event_model.pgh_events if isinstance(e, DatabaseEvent) and e.operations == ["DELETE"]
    ]


def diff_expression(table: str, event_id: str, event_models, quote) -> tuple[str, list]:
    """SQL (and its parameters) giving the diff of the event ``event_id`` of the event table ``table``.

    ``table`` and ``event_id`` are SQL expressions (an aggregate row's
    ``pgh_table`` and ``pgh_id`` columns).
    """
    if not event_models:
        return "NULL::jsonb", []
    whens, params = [], []
    for model in event_models:
        name = model._meta.db_table
        whens.append(
            _TABLE_DIFF.format(
                table=quote(name),
                event_id=event_id,
                same_object="p.pgh_obj_id = c.pgh_obj_id AND" if model._pgh_has_obj else "",
            )
        )
        params += [name, _PGH_COLUMNS, _PGH_COLUMNS, delete_labels(model)]
    return f"(CASE {table} {''.join(whens)} END)", params


def _splice(sql: str, params: tuple, column: str, replacements) -> tuple[str, tuple]:
    """Replace each occurrence of ``column`` in ``sql`` by the next (sql, params) of ``replacements``.

    Each replacement's parameters go where its placeholders now stand: after
    the ``%s`` placeholders that precede it.
    """
    pieces = sql.split(column)
    out_sql, out_params, used = [pieces[0]], [], 0
    for piece in pieces[1:]:
        before = out_sql[-1].count("%s")
        out_params += params[used : used + before]
        used += before
        expression, expression_params = next(replacements)
        out_params += expression_params
        out_sql += [expression, piece]
    out_params += params[used:]
    return "".join(out_sql), tuple(out_params)


def replace_diff_column(compiler, sql: str, params: tuple, row: str, event_models) -> tuple[str, tuple]:
    """``sql``, compiled by ``compiler``, with the diffs computed for its returned rows only.

    Every reference to ``row``'s pgh_diff column becomes :func:`diff_expression`.
    PostgreSQL evaluates such an output expression after its Sort and LIMIT,
    but before OFFSET skips rows: a query with an offset (a later page) is
    wrapped, its SELECT list reading NULL for the diff and the wrapper
    computing it for the page's rows. (A subquery's row order is kept by a
    wrapper that neither joins nor sorts.)
    """
    quote = compiler.connection.ops.quote_name
    column = f"{row}.{quote('pgh_diff')}"
    if column not in sql:
        return sql, params
    own = diff_expression(f"{row}.pgh_table", f"{row}.pgh_id", event_models, quote)
    names = [getattr(getattr(selected[0], "target", None), "name", None) for selected in compiler.select]
    wrap = (
        compiler.query.low_mark
        and all(names.count(name) == 1 for name in ("pgh_diff", "pgh_table", "pgh_id"))
        and sql.index(column) < sql.index(" FROM ")
    )
    if not wrap:
        return _splice(sql, params, column, iter(lambda: own, None))
    rest = iter(lambda: own, None)
    inner, inner_params = _splice(sql, params, column, _first_then(("NULL::jsonb", []), rest))
    aliases = [f"c{i}" for i in range(len(names))]
    outer = [f"w.{alias}" for alias in aliases]
    outer_diff, outer_params = diff_expression(
        f"w.c{names.index('pgh_table')}", f"w.c{names.index('pgh_id')}", event_models, quote
    )
    outer[names.index("pgh_diff")] = outer_diff
    # The wrapper's only placeholders are the diff's, all before the subquery's.
    return (
        f"SELECT {', '.join(outer)} FROM ({inner}) AS w ({', '.join(aliases)})",
        (*outer_params, *inner_params),
    )


def _first_then(first, rest):
    yield first
    yield from rest
