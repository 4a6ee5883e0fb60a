"""The row log as an undo source: a table logged by ``initlogging``, its rows rebuilt from the log.

The state of a row before the target's first change is rebuilt as pgMemento
does, set-wise (see :data:`_ROWS_PLAN_SQL`); see :mod:`audit_stream.history.undo_sources`
for the interface every source has.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from django.apps import apps
from django.db import models

from audit_stream import rowlog
from audit_stream.history.undo_sources import (
    DELETE,
    RESTORE,
    UPDATE,
    Refusal,
    Step,
    Target,
    action_for,
    diff_values,
    later_changes,
    loads_exact,
)
from audit_stream.triggers import quote_name

__all__ = ["Column", "RowLogSource"]


# --- logged tables: the row log --------------------------------------------------------------------

# Each row the target changed, with its state just before the target's first
# entry for it, rebuilt as pgMemento does: every entry of the row from that
# first one on (the target's or later ones) is undone, newest first. Written
# set-wise: the base is the row at the first delete of that chain (its
# old_data), else the live row; over it go the columns the earlier updates
# changed, each at its oldest value. Old column names are mapped to their
# current ones (%(renamed_from)s -> %(renamed_to)s, from the DDL log).
_ROWS_PLAN_SQL = """
WITH undone AS (
    SELECT r.pgh_obj_id AS obj, min(r.pgh_id) AS first
    FROM audit_stream_row_log AS r
    WHERE r.logged_table = ANY (%(names)s) AND {target_r}
    GROUP BY r.pgh_obj_id
),
chain AS MATERIALIZED (
    SELECT u.obj, r.pgh_id, r.pgh_label, r.old_data, r.pgh_context_id, r.pgh_created_at,
           {target_r} AS undone
    FROM undone AS u
    JOIN audit_stream_row_log AS r
      ON r.logged_table = ANY (%(names)s) AND r.pgh_obj_id = u.obj AND r.pgh_id >= u.first
),
base AS (
    SELECT DISTINCT ON (c.obj) c.obj, c.pgh_id, c.old_data
    FROM chain AS c WHERE c.pgh_label = 'delete'
    ORDER BY c.obj, c.pgh_id
),
earlier AS (
    SELECT k.obj, jsonb_object_agg(k.key, k.value) AS old
    FROM (
        SELECT DISTINCT ON (c.obj, kv.key) c.obj, kv.key, kv.value
        FROM chain AS c
        LEFT JOIN base AS b ON b.obj = c.obj
        CROSS JOIN LATERAL jsonb_each(c.old_data) AS kv
        WHERE c.pgh_label = 'update' AND (b.pgh_id IS NULL OR c.pgh_id < b.pgh_id)
        ORDER BY c.obj, kv.key, c.pgh_id
    ) AS k
    GROUP BY k.obj
),
later AS (
    SELECT c.obj, jsonb_agg(jsonb_build_array(c.pgh_id, c.pgh_label, c.pgh_context_id, c.pgh_created_at)
                            ORDER BY c.pgh_id) AS later
    FROM chain AS c WHERE NOT c.undone
    GROUP BY c.obj
)
SELECT u.obj, f.pgh_label, b.pgh_id IS NOT NULL, to_jsonb(t)::text,
       CASE WHEN f.pgh_label <> 'insert' THEN
           (coalesce({renamed_base}, to_jsonb(t)) || coalesce({renamed_earlier}, '{{}}'))::text
       END,
       l.later::text
FROM undone AS u
JOIN audit_stream_row_log AS f ON f.pgh_id = u.first
LEFT JOIN base AS b ON b.obj = u.obj
LEFT JOIN earlier AS d ON d.obj = u.obj
LEFT JOIN later AS l ON l.obj = u.obj
LEFT JOIN {table} AS t ON t.{pk} = u.obj::{pk_type}
ORDER BY u.first
"""

# A JSON object with its keys renamed from former column names to current ones.
_RENAMED_SQL = """(SELECT jsonb_object_agg(coalesce(m.new, kv.key), kv.value)
                  FROM jsonb_each({value}) AS kv
                  LEFT JOIN unnest(%(renamed_from)s::text[], %(renamed_to)s::text[]) AS m (old, new)
                    ON m.old = kv.key)"""

_ROWS_LOCK_SQL = """
SELECT 1 FROM {table} AS t
WHERE t.{pk} IN (SELECT r.pgh_obj_id::{pk_type} FROM audit_stream_row_log AS r
                 WHERE r.logged_table = ANY (%(names)s) AND {target_r})
FOR UPDATE OF t
"""

# Rows as JSON (an array bound as %s) back into the table's row type: PostgreSQL
# does the conversions.
_ROWS_RESTORE_SQL = """
INSERT INTO {table} ({columns}) OVERRIDING SYSTEM VALUE
SELECT {columns} FROM jsonb_populate_recordset(NULL::{table}, %s::jsonb)
"""
_ROWS_UPDATE_SQL = """
UPDATE {table} AS t SET {assignments}
FROM jsonb_populate_recordset(NULL::{table}, %s::jsonb) AS r
WHERE t.{pk} = r.{pk}
"""
_ROWS_DELETE_SQL = "DELETE FROM {table} AS t WHERE t.{pk} = ANY (%s::text[]::{pk_type}[])"
_ROWS_INCOMING_SQL = "SELECT * FROM jsonb_populate_recordset(NULL::{table}, %(rows)s::jsonb)"


@dataclass
class Column:
    """A column of a logged table, as the catalog describes it now."""

    name: str
    type: str
    not_null: bool
    has_default: bool
    generated: bool


class RowLogSource:
    """A table logged by ``initlogging``: its rows rebuilt from the row log."""

    def __init__(
        self, table: str, names: list[str], columns: list[Column], pk: str, renamed: dict[str, str]
    ) -> None:
        self.qualified = table  # "schema.table", its current name
        self.names = names  # and every former name, as the row log has them
        self.model = _model_of(table)
        self.label = self.model._meta.label_lower if self.model else table
        self.columns = columns
        self.pk = pk
        self.pk_type = next(c.type for c in columns if c.name == pk)
        self.renamed = renamed  # former column name -> current one
        schema, _, name = table.partition(".")
        self.sql_names = {
            "table": f"{quote_name(schema)}.{quote_name(name)}",
            "pk": quote_name(pk),
            "pk_type": self.pk_type,
        }

    @property
    def table(self) -> str:
        return self.qualified

    @property
    def sql_table(self) -> str:
        return self.sql_names["table"]

    def _params(self, target: Target) -> dict:
        return {
            "target": target.param,
            "names": self.names,
            "renamed_from": list(self.renamed),
            "renamed_to": list(self.renamed.values()),
        }

    def _sql(self, template: str, target: Target | None = None, **extra: str) -> str:
        names = {**self.sql_names, **extra}
        if target is not None:
            names["target_r"] = target.where("r")
        return template.format(
            renamed_base=_RENAMED_SQL.format(value="b.old_data"),
            renamed_earlier=_RENAMED_SQL.format(value="d.old"),
            **names,
        )

    def lock(self, cursor, target: Target) -> None:
        cursor.execute(self._sql(_ROWS_LOCK_SQL, target), self._params(target))

    def plan(self, cursor, target: Target) -> tuple[list[Step], list[Refusal]]:
        cursor.execute(self._sql(_ROWS_PLAN_SQL, target), self._params(target))
        current = {c.name: c for c in self.columns}
        steps, refusals = [], []
        for obj, first_label, deleted_since, live_text, before_text, later in cursor.fetchall():
            live, before = loads_exact(live_text), loads_exact(before_text)
            existed = first_label != "insert"
            if existed and live is None and not deleted_since:
                refusals.append(Refusal(self.label, obj, "the row is gone but no delete of it is logged"))
                continue
            changes = diff_values(current, live, before) if existed else []
            action = action_for(existed, live, changes)
            if action in (RESTORE, UPDATE):
                problem = self._schema_problem(before, action)
                if problem:
                    refusals.append(Refusal(self.label, obj, problem))
                    continue
            if action == RESTORE:
                changes = diff_values(current, None, before)
            elif action == DELETE:
                changes = diff_values(current, live, None)
            steps.append(
                Step(
                    self.label,
                    obj,
                    action,
                    changes,
                    later_changes(self.label, obj, rowlog.ROW_LOG_TABLE, later),
                    source=self,
                    data=obj if action == DELETE else (before_text, frozenset(before)),
                )
            )
        return steps, refusals

    def _schema_problem(self, before: dict, action: str) -> str | None:
        """Why a state recorded under an older schema cannot be written to the table now."""
        current = {c.name: c for c in self.columns}
        dropped = sorted(set(before) - set(current))
        if dropped:
            return (
                f"column(s) {', '.join(dropped)} of {self.qualified} were dropped since the change"
                " (see the DDL log); the recorded state cannot be put back whole"
            )
        if action == RESTORE:
            added = [
                c.name
                for c in self.columns
                if c.name not in before and c.not_null and not c.has_default and not c.generated
            ]
            if added:
                return (
                    f"column(s) {', '.join(added)} were added to {self.qualified} since the change,"
                    " NOT NULL without a default: the row cannot be re-created"
                )
        return None

    def _writable(self, names: Iterable[str] | None = None) -> list[str]:
        return [c.name for c in self.columns if not c.generated and (names is None or c.name in names)]

    def write(self, cursor, action: str, steps: list[Step]) -> None:
        if action == DELETE:
            cursor.execute(self._sql(_ROWS_DELETE_SQL), [[s.data for s in steps]])
            return
        # One statement per set of recorded columns (one per schema version, not
        # per row): a column a state does not record keeps its default (restore)
        # or its value (update).
        groups: dict[frozenset, list[str]] = {}
        for step in steps:
            text, keys = step.data
            groups.setdefault(keys, []).append(text)
        for keys, texts in groups.items():
            columns = self._writable(keys)
            if action == RESTORE:
                sql = self._sql(_ROWS_RESTORE_SQL, columns=", ".join(quote_name(c) for c in columns))
            else:
                sql = self._sql(
                    _ROWS_UPDATE_SQL,
                    assignments=", ".join(
                        f"{quote_name(c)} = r.{quote_name(c)}" for c in columns if c != self.pk
                    ),
                )
            cursor.execute(sql, ["[" + ",".join(texts) + "]"])

    def incoming(self, steps: list[Step]) -> tuple[str, dict, dict[str, str]]:
        sql = _ROWS_INCOMING_SQL.format(**self.sql_names)
        rows = "[" + ",".join(s.data[0] for s in steps) + "]"
        return sql, {"rows": rows}, {c.name: c.name for c in self.columns if c.name != self.pk}


def _model_of(qualified: str) -> type[models.Model] | None:
    label = rowlog.models_by_table().get(qualified)
    return apps.get_model(label) if label else None
