"""History read and written back: an object as of a moment, backfill of rows older than tracking, undo.

Public: :func:`as_of` (re-exported as ``audit_stream.as_of``) and
:class:`ReadOnlyHistoryError`. Undo of a request or transaction is
:mod:`audit_stream.history.undo`; revert and restore of one object live in
:mod:`audit_stream.revert`.
"""

from audit_stream.history.asof import as_of
from audit_stream.history.query import ReadOnlyHistoryError
from audit_stream.history.related import is_as_of

__all__ = ["ReadOnlyHistoryError", "as_of", "is_as_of"]
