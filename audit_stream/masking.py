"""Masking: sensitive fields never leave the event tables in clear.

A field is masked by ``track(..., mask=["ssn"])`` or by ``AUDIT_STREAM["MASK"]``
(:func:`configured`): per model label (field names), or per table (column
names) for tables logged by ``initlogging``; ``auth_user.password`` is masked
by default. The event tables keep the clear value (``revert``, ``undo`` and
``as_of`` need it, and only the owner role reads them); everything built from
them shows the mask instead:

* the fold writes ``Change.diff`` and ``Change.snapshot`` masked, so webhook
  and sink payloads, the dashboard and the ``Change`` admin never see the
  value (:mod:`audit_stream.stream.fold`);
* ``AggregateEvent`` (the admin history of tracked models) masks the rows it
  reads from event tables with the same SQL (:mod:`audit_stream.aggregate`);
* the admin history of ``initlogging`` tables masks row log entries in Python
  (:func:`mask_pairs`).

How a masked value looks: ``"***"``; or, when ``AUDIT_STREAM["MASK_KEY"]`` is
set, ``"hmac:"`` and the first 16 hex digits of HMAC-SHA256(key, value as
text), so a consumer sees whether a value changed but cannot guess it without
the key. JSON ``null`` stays ``null``. A change of a masked field is in the
diff like any other (``{"ssn": ["***", "***"]}``), so a change that touches
only masked fields is still delivered.

To tell whether a masked value changed, the fold compares keyed digests: the
full HMAC-SHA256 of each masked value is kept in ``Change.mask_digests``
(never shown nor sent), keyed with ``MASK_KEY``, else with a key derived from
``SECRET_KEY``. Inside SQL the key is bound as HMAC's inner and outer padded
keys (:func:`pads`), so HMAC is computed with PostgreSQL's own ``sha256()``:
no extension is needed.

SQL: every expression is built by :class:`MaskSql` from one template each,
reused by the fold and ``AggregateEvent``. Each reads a JSONB object and the
list of keys to mask (a JSONB array); the parameters are bound, never inlined.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.apps import apps
from django.db import models

from audit_stream import config

__all__ = [
    "FIXED",
    "MaskSql",
    "columns_of",
    "configured",
    "digest",
    "label_columns",
    "mask_changes",
    "mask_pairs",
    "mask_value",
    "model_columns",
    "pads",
    "row_log_columns",
    "table_columns",
    "validate",
]

#: How a masked value looks without ``MASK_KEY``.
FIXED = "***"
#: The prefix of a keyed-hash mask, followed by 16 hex digits.
HASH_PREFIX = "hmac:"
HASH_DIGITS = 16
#: Masked unless the setting says otherwise (``{"auth_user": []}`` unmasks it).
DEFAULT_MASK = {"auth_user": ["password"]}


def configured() -> dict[str, list[str]]:
    """``AUDIT_STREAM["MASK"]`` with the defaults: ``{model label or table: [field or column, ...]}``."""
    setting = config.mask()
    return {**DEFAULT_MASK, **(setting if isinstance(setting, dict) else {})}


def hashed() -> bool:
    """Whether masked values are shown as a keyed hash (``MASK_KEY`` is set) rather than ``"***"``."""
    return bool(config.mask_key())


def _key() -> bytes:
    key = config.mask_key()
    if key:
        return key.encode()
    from django.utils.crypto import salted_hmac

    return salted_hmac("audit_stream.masking", "digest").digest()


def pads() -> bytes:
    """HMAC-SHA256's inner and outer padded keys (64 bytes each), bound into the SQL as one ``bytea``."""
    key = _key()
    if len(key) > 64:
        key = hashlib.sha256(key).digest()
    key = key.ljust(64, b"\0")
    return bytes(b ^ 0x36 for b in key) + bytes(b ^ 0x5C for b in key)


def _text(value: Any) -> str:
    """A JSON value as text, as PostgreSQL's ``#>> '{}'`` gives it (a string without its quotes)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, Decimal)):
        return str(value)
    return json.dumps(value, separators=(", ", ": "), default=str)


def digest(value: Any) -> str:
    """A value's full keyed digest (hex): what the fold compares; a keyed mask shows its start."""
    return hmac.new(_key(), _text(value).encode(), hashlib.sha256).hexdigest()


def mask_value(value: Any) -> Any:
    """A value as a face shows it when its field is masked (``None`` stays ``None``)."""
    if value is None:
        return None
    return HASH_PREFIX + digest(value)[:HASH_DIGITS] if hashed() else FIXED


def mask_pairs(diff: dict, columns: Iterable[str]) -> dict:
    """``{column: [old, new]}`` with both sides of the masked ``columns`` masked."""
    masked = set(columns)
    return {
        column: [mask_value(v) for v in pair] if column in masked else pair for column, pair in diff.items()
    }


# --- which columns are masked ------------------------------------------------------------------


def _model(label: str) -> type[models.Model] | None:
    if label.count(".") != 1:
        return None
    try:
        return apps.get_model(label)
    except (LookupError, ValueError):
        return None


def _field_column(model: type[models.Model], name: str) -> str | None:
    for field in model._meta.concrete_fields:
        if name in (field.name, field.attname, field.column):
            return field.column
    return None


def _table_keys(model: type[models.Model]) -> set[str]:
    table = model._meta.db_table
    return {table, f"{config.schema()}.{table}", f"public.{table}"}


def _tracked_columns(model: type[models.Model]) -> set[str]:
    """The columns of ``model``'s table that the setting masks (by model label or by table)."""
    columns = set()
    for key, names in configured().items():
        if _model(key) is model._meta.concrete_model:
            columns |= {c for c in (_field_column(model, n) for n in names) if c}
        elif key in _table_keys(model):
            columns |= set(names)
    return columns


def table_columns(model: type[models.Model]) -> list[str]:
    """The masked columns of ``model``'s table in the row log of ``initlogging``."""
    return sorted(_tracked_columns(model))


def model_columns(model: type[models.Model]) -> set[str]:
    """Every masked column of ``model``: its event models' (``track(mask=...)``, setting) and table's."""
    from audit_stream import tracking

    masked = set(table_columns(model))
    for event_model in tracking.event_models_for(model):
        masked |= set(columns_of(event_model))
    return masked


def label_columns(label: str) -> set[str]:
    """The masked columns of what a change names: a model label, or a logged table's ``"schema.table"``."""
    model = _model(label)
    if model is not None:
        return model_columns(model)
    return set(row_log_columns({label: label}).get(label, ()))


def mask_changes(changes: Iterable[tuple], columns: Iterable[str]) -> list[tuple]:
    """``(column, value, value, ...)`` rows with the values of the masked ``columns`` masked."""
    masked = set(columns)
    return [
        (row[0], *(mask_value(v) for v in row[1:])) if row[0] in masked else tuple(row) for row in changes
    ]


def columns_of(event_model: type[models.Model]) -> list[str]:
    """The masked columns of an event table: ``track(mask=...)`` and the setting's."""
    tracked = event_model.pgh_tracked_model._meta.concrete_model
    wanted = {c for c in (_field_column(tracked, n) for n in getattr(event_model, "pgh_mask", ())) if c}
    wanted |= _tracked_columns(tracked)
    return sorted(
        field.column
        for field in event_model._meta.concrete_fields
        if not field.name.startswith("pgh_") and field.column in wanted
    )


def row_log_columns(names: dict[str, str]) -> dict[str, list[str]]:
    """``{name: [masked column, ...]}`` for the row log, keyed by every name its fold uses.

    ``names`` maps each name a logged table has or had (``"schema.table"``) to
    its model label or current name (``rowlog.StreamNames.models``); the row
    log's fold keys a batch's rows by the latter.
    """
    found: dict[str, set[str]] = {}
    setting = configured()
    for table, name in names.items():
        columns = set()
        model = _model(name)
        if model is not None:
            columns |= _tracked_columns(model)
        for candidate in (table, name, table.partition(".")[2], name.partition(".")[2]):
            if _model(candidate) is None:
                columns |= set(setting.get(candidate, ()))
        if columns:
            found.setdefault(name, set()).update(columns)
            found.setdefault(table, set()).update(columns)
    return {name: sorted(columns) for name, columns in found.items()}


def validate() -> list[str]:
    """What is wrong with ``AUDIT_STREAM["MASK"]`` and ``MASK_KEY``, one sentence each (empty: fine)."""
    problems = []
    mask = config.mask()
    if not isinstance(mask, dict):
        return []  # a bad type is reported by check_settings (audit_stream.E010)
    for key, names in mask.items():
        if not isinstance(key, str) or not key:
            problems.append(f'AUDIT_STREAM["MASK"] has a key {key!r}: name a model ("app.Model") or a table.')
            continue
        if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) and n for n in names):
            problems.append(f'AUDIT_STREAM["MASK"][{key!r}] must be a list of field (or column) names.')
            continue
        model = _model(key) or _model_of_table(key)
        if model is None:
            if "." in key and re.fullmatch(r"\w+\.[A-Z]\w*", key):
                problems.append(f'AUDIT_STREAM["MASK"] names the model {key!r}, which is not installed.')
            continue  # a table without a model: its columns are known only to the database
        for name in names:
            if _field_column(model, name) is None:
                choices = ", ".join(sorted(f.name for f in model._meta.concrete_fields))
                problems.append(
                    f'AUDIT_STREAM["MASK"][{key!r}] names {name!r}, which {model._meta.label} does not have'
                    f" (its fields: {choices})."
                )
    key_value = config.mask_key()
    if isinstance(key_value, str) and len(key_value) < 16:
        problems.append('AUDIT_STREAM["MASK_KEY"] must be a string of at least 16 characters.')
    return problems


def _model_of_table(key: str) -> type[models.Model] | None:
    table = key.partition(".")[2] if "." in key else key
    for model in apps.get_models(include_auto_created=True):
        if model._meta.db_table == table and not model._meta.proxy:
            return model
    return None


# --- SQL -----------------------------------------------------------------------------------------

# HMAC-SHA256 of the text of the JSON value {value} (a string without its quotes),
# with t.pads = inner padded key || outer padded key (pads()): hex digits.
_DIGEST = (
    "encode(sha256(substr(t.pads, 65) || sha256(substr(t.pads, 1, 64)"
    " || convert_to({value} #>> '{{}}', 'UTF8'))), 'hex')"
)

# The object {state} with the value of each key listed in {columns} (a JSONB
# array) replaced by {replace} of it (s.value); JSON nulls stay null, NULL stays
# NULL. Only the listed keys are visited, not the whole object. `OFFSET 0` keeps
# the planner from pulling `t` up, which would copy {state} (a diff, a row's
# JSON) into each reference and compute it several times per row. {state},
# {columns} and {pads} appear once each, in this order (for positional
# parameters); t.pads is unused when {replace} needs no key.
_REPLACE = """(SELECT t.v || coalesce((SELECT jsonb_object_agg(s.key, {replace})
                            FROM (SELECT c.key, t.v -> c.key AS value
                                  FROM jsonb_array_elements_text(t.columns) AS c (key)) AS s
                            WHERE s.value <> 'null'::jsonb{keep}), '{{}}')
 FROM (SELECT {state} AS v, {columns} AS columns, {pads}::bytea AS pads OFFSET 0) AS t)"""

# The same for a diff {column: [old, new]}: both sides of each listed key present.
_REPLACE_PAIRS = """(SELECT t.v || coalesce((SELECT jsonb_object_agg(s.key, jsonb_build_array(
                                CASE WHEN s.value -> 0 = 'null'::jsonb THEN s.value -> 0 ELSE {old} END,
                                CASE WHEN s.value -> 1 = 'null'::jsonb THEN s.value -> 1 ELSE {new} END))
                            FROM (SELECT c.key, t.v -> c.key AS value
                                  FROM jsonb_array_elements_text(t.columns) AS c (key)) AS s
                            WHERE s.value IS NOT NULL), '{{}}')
 FROM (SELECT {state} AS v, {columns} AS columns, {pads}::bytea AS pads OFFSET 0) AS t)"""

# The JSON value {value} is already in a mask's form ("***", or "hmac:" and 16 hex digits).
_MASKED_FORM = (
    f"(jsonb_typeof({{value}}) = 'string' AND (({{value}} #>> '{{{{}}}}') = '{FIXED}'"
    f" OR ({{value}} #>> '{{{{}}}}') ~ '^{HASH_PREFIX}[0-9a-f]{{{{{HASH_DIGITS}}}}}$'))"
)

# The digests of the listed keys of {state} that hold a clear value and have none
# in {digests} (JSON null stays null, as the fold keeps it): NULL if none.
_MISSING_DIGESTS = """(SELECT jsonb_object_agg(s.key, CASE WHEN s.value = 'null'::jsonb THEN s.value
                                               ELSE to_jsonb({digest}) END)
 FROM (SELECT {state} AS v, coalesce({digests}, '{{}}'::jsonb) AS d, {columns} AS columns,
              {pads}::bytea AS pads OFFSET 0) AS t,
      LATERAL (SELECT c.key, t.v -> c.key AS value
               FROM jsonb_array_elements_text(t.columns) AS c (key)) AS s
 WHERE s.value IS NOT NULL AND NOT t.d ? s.key AND NOT {masked_form})"""

# Only the listed keys of {state}: the digests the fold keeps (NULL if none).
_PICK = """(SELECT jsonb_object_agg(c.key, t.v -> c.key)
 FROM (SELECT {state} AS v, {columns} AS columns OFFSET 0) AS t,
      jsonb_array_elements_text(t.columns) AS c (key)
 WHERE t.v ? c.key)"""


@dataclass(frozen=True)
class MaskSql:
    """The SQL expressions that mask some keys of a JSONB object.

    ``columns`` is the SQL of the JSONB array of keys to mask (a bound
    parameter, or an expression that picks one per row); ``key`` the SQL of
    the bound :func:`pads`. Each expression names ``columns`` and ``key`` once,
    after the state it reads, so it works with positional parameters when the
    state has none of its own (:meth:`positional`).

    Two forms of a state: *digested* (masked values replaced by their full
    keyed digest, which the fold compares) and *shown* (masked values as a face
    shows them). Clear values go straight to *shown* with :meth:`masked`.
    """

    columns: str
    key: str
    hashed: bool

    def _render(self, template: str, state: str, **values: str) -> str:
        values.setdefault("keep", "")
        return template.format(state=state, columns=self.columns, pads=self.key, **values)

    def _shown(self, digest_sql: str) -> str:
        if self.hashed:
            return f"to_jsonb('{HASH_PREFIX}' || left({digest_sql}, {HASH_DIGITS}))"
        return f"'\"{FIXED}\"'::jsonb"

    def digested(self, state: str) -> str:
        """``state`` (clear) with each masked value replaced by its full digest (a JSON string)."""
        return self._render(_REPLACE, state, replace=f"to_jsonb({_DIGEST.format(value='s.value')})")

    def shown(self, state: str) -> str:
        """A digested ``state`` as faces show it."""
        return self._render(_REPLACE, state, replace=self._shown("(s.value #>> '{}')"))

    def remasked(self, state: str) -> str:
        """A shown ``state`` whose masked keys may hold values folded before they were masked: those masked.

        A value already in a mask's form stays as it is (masking it again would
        change a keyed mask; a ``"***"`` from before ``MASK_KEY`` was set stays ``"***"``).
        """
        return self._render(
            _REPLACE,
            state,
            replace=self._shown(_DIGEST.format(value="s.value")),
            keep=f" AND NOT {_MASKED_FORM.format(value='s.value')}",
        )

    def remasked_pairs(self, diff: str) -> str:
        """A shown diff ``{column: [old, new]}``: each side of a masked key masked, unless it already is."""
        sides = {}
        for name, side in (("old", "(s.value -> 0)"), ("new", "(s.value -> 1)")):
            shown = self._shown(_DIGEST.format(value=side))
            sides[name] = f"CASE WHEN {_MASKED_FORM.format(value=side)} THEN {side} ELSE {shown} END"
        return self._render(_REPLACE_PAIRS, diff, **sides)

    def missing_digests(self, state: str, digests: str) -> str:
        """The digests a shown ``state`` lacks in ``digests``: of each masked key still clear (NULL if none).

        What the fold would have kept had the key been masked when the change
        was folded, so the next change of the object compares against it.
        """
        return _MISSING_DIGESTS.format(
            state=state,
            digests=digests,
            columns=self.columns,
            pads=self.key,
            digest=_DIGEST.format(value="s.value"),
            masked_form=_MASKED_FORM.format(value="s.value"),
        )

    def before(self, change: str) -> str:
        """The state a folded change ``change`` (an alias of ``audit_stream_change``) left, digested.

        Its masked keys come from its digests alone (a change folded before a key
        was masked has no digest for it: the key is then unknown, never its clear
        value); digests of keys no longer masked are left out.
        """
        return (
            f"(({change}.snapshot - ARRAY(SELECT jsonb_array_elements_text({self.columns})))"
            f" || coalesce((SELECT jsonb_object_agg(d.key, d.value)"
            f" FROM jsonb_each({change}.mask_digests) AS d WHERE {self.columns} ? d.key), '{{}}'))"
        )

    def masked(self, state: str) -> str:
        """A clear ``state`` as faces show it."""
        return self._render(_REPLACE, state, replace=self._shown(_DIGEST.format(value="s.value")))

    def shown_pairs(self, diff: str, *, clear: bool = False) -> str:
        """A diff ``{column: [old, new]}`` of digested (or, with ``clear``, clear) states, as shown."""
        sides = {}
        for name, side in (("old", "(s.value -> 0)"), ("new", "(s.value -> 1)")):
            source = _DIGEST.format(value=side) if clear else f"({side} #>> '{{}}')"
            sides[name] = self._shown(source)
        return self._render(_REPLACE_PAIRS, diff, **sides)

    def digests(self, state: str) -> str:
        """The digests of a digested ``state``'s masked keys, alone (what ``Change.mask_digests`` keeps)."""
        return _PICK.format(state=state, columns=self.columns)

    @staticmethod
    def positional() -> MaskSql:
        """For ``%s`` queries: bind :meth:`params` after each expression's state (not for digests())."""
        return MaskSql(columns="%s::jsonb", key="%s", hashed=hashed())

    @staticmethod
    def params(columns: list[str]) -> list:
        """The positional parameters of one expression of :meth:`positional`."""
        return [json.dumps(columns), pads()]
