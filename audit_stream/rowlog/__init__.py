"""Schema-wide logging without model changes (django-pgMemento's ``initlogging``).

``manage.py initlogging`` puts four statement-level triggers (insert, update,
delete, truncate) on every table of a schema that is not ignored; they all run one
generic function, :data:`LOG_ROWS_FUNCTION`, which writes into one shared
table, ``audit_stream_row_log`` (:class:`audit_stream.models.RowLog`). Rows
are recorded as JSONB (``to_jsonb(row)``), so a column added later is logged
without running ``initlogging`` again.

A DDL event trigger (:data:`LOG_DDL_FUNCTION`, :data:`LOG_DROP_FUNCTION`)
records ``ALTER TABLE`` (renames and column changes) and ``DROP TABLE`` of
logged tables in ``audit_stream_ddl_log``, with the columns before and after,
so old row logs stay readable; when a primary key column is renamed it moves
the triggers to the new name.

The row log feeds the same stream as event tables (fold, change feed,
webhooks, retention) and the same admin history, revert and restore.

Everything here is SQL written out once. The functions are (re)created by
``initlogging``, which is idempotent, and dropped by ``droplogging``. Like every
function audit_stream installs, they run as their owner (``SECURITY DEFINER``)
with a pinned ``search_path`` and name audit_stream's tables with their schema
(``@schema@`` below, see :func:`functions.render`); ``EXECUTE`` on the two that start
and stop logging is revoked from ``PUBLIC``, so the application's runtime role
cannot switch logging off.

The package, one concept a module:

* :mod:`~audit_stream.rowlog.functions`: the SQL it installs, written out once;
* :mod:`~audit_stream.rowlog.install`: ``initlogging`` and ``droplogging``;
* :mod:`~audit_stream.rowlog.names`: which model a logged table is, renames followed;
* :mod:`~audit_stream.rowlog.versions`: a row as an entry recorded it.
"""

from audit_stream.registry import DDL_LOG_TABLE, ROW_LOG_TABLE
from audit_stream.rowlog.functions import (
    COLUMNS_FUNCTION,
    CREATE_EVENT_TRIGGERS,
    DDL_ID_SQL,
    EVENT_TRIGGERS,
    LOG_DDL_FUNCTION,
    LOG_DROP_FUNCTION,
    LOG_ROWS_FUNCTION,
    START_LOGGING_FUNCTION,
    STOP_LOGGING_FUNCTION,
    TRIGGERS,
    UNINSTALL_SQL,
)
from audit_stream.rowlog.install import (
    TableStatus,
    ddl_functions,
    drop_logging,
    init_logging,
    install_functions,
    refresh_ddl_functions,
)
from audit_stream.rowlog.names import (
    StreamNames,
    is_logged,
    logged_table,
    models_by_table,
    stream_names,
    table_names,
)
from audit_stream.rowlog.versions import model_of, recorded_instance, recorded_state

__all__ = [
    "COLUMNS_FUNCTION",
    "CREATE_EVENT_TRIGGERS",
    "DDL_ID_SQL",
    "DDL_LOG_TABLE",
    "EVENT_TRIGGERS",
    "LOG_DDL_FUNCTION",
    "LOG_DROP_FUNCTION",
    "LOG_ROWS_FUNCTION",
    "ROW_LOG_TABLE",
    "START_LOGGING_FUNCTION",
    "STOP_LOGGING_FUNCTION",
    "TRIGGERS",
    "UNINSTALL_SQL",
    "StreamNames",
    "TableStatus",
    "ddl_functions",
    "drop_logging",
    "init_logging",
    "install_functions",
    "is_logged",
    "logged_table",
    "model_of",
    "models_by_table",
    "recorded_instance",
    "recorded_state",
    "refresh_ddl_functions",
    "stream_names",
    "table_names",
]
