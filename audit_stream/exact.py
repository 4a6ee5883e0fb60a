"""The one JSON decoder of every API that hands recorded values back: numbers stay exact.

PostgreSQL's ``jsonb`` keeps a number as the ``numeric`` it was given, with
every digit (``to_jsonb`` of a ``numeric(30,10)`` column gives
``12345678901234567890.1234567891``). Python's ``json`` reads any number with
a fraction or an exponent as a ``float``, which keeps about 17 significant
digits: two different prices can read back as the same float. Everything
audit_stream returns from JSON (``Change.diff`` and ``snapshot``, webhook
payloads, context metadata, ``AggregateEvent``, the row log, the admin and
the dashboard) is read with :class:`ExactDecoder`:

* a number with a fraction or an exponent becomes a :class:`~decimal.Decimal`
  with the same digits (``10.00`` stays ``Decimal("10.00")``);
* an integer becomes an ``int`` (Python's are exact at any size);
* everything else is what :mod:`json` gives.

:func:`dumps` writes such values back as JSON text without losing a digit.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

__all__ = ["ExactDecoder", "dumps", "loads"]


class ExactDecoder(json.JSONDecoder):
    """Reads JSON numbers with a fraction or exponent as ``Decimal``: recorded prices stay 10.00, not 10.0."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **{"parse_float": Decimal, **kwargs})


def loads(text: str | bytes) -> Any:
    """Decode JSON text with :class:`ExactDecoder`."""
    return json.loads(text, cls=ExactDecoder)


def dumps(value: Any) -> str:
    """JSON text of a decoded value; a ``Decimal`` is written as the number it is, digit for digit.

    For display (admin, dashboard) and for comparing values; non-ASCII
    characters are kept as they are.
    """
    if isinstance(value, Decimal):
        if not value.is_finite():  # not from JSON; never written as a bare NaN
            return json.dumps(str(value))
        return format(value, "f")  # every digit, as PostgreSQL writes it: 0.0000000000, not 0E-10
    if isinstance(value, dict):
        items = (f"{json.dumps(str(k), ensure_ascii=False)}: {dumps(v)}" for k, v in value.items())
        return "{" + ", ".join(items) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(dumps(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)
