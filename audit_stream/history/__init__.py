"""History read and written back: an object as of a moment, backfill of rows older than tracking.

Public: :func:`as_of` (re-exported as ``audit_stream.as_of``) and
:class:`ReadOnlyHistoryError`. Revert and restore live in
:mod:`audit_stream.revert`.
"""

from audit_stream.history.asof import as_of
from audit_stream.history.query import ReadOnlyHistoryError
from audit_stream.history.related import is_as_of

__all__ = ["ReadOnlyHistoryError", "as_of", "is_as_of"]
