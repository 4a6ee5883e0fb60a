"""Every figure the dashboard shows, each read with a bounded, indexed query: one name to import them by.

The figures live in modules named after what they describe; this module
gathers their public names (the views, the metrics, the admin and user code
import them from here):

* :mod:`~audit_stream.dashboard.reading`: one read transaction a page, the planner's row estimates;
* :mod:`~audit_stream.dashboard.stream`: backlog, lag and folded totals per event table and fold lane;
* :mod:`~audit_stream.dashboard.folds`: fold throughput and commit-to-fold latency of the last hour;
* :mod:`~audit_stream.dashboard.processes`: heartbeats and the oldest open transaction;
* :mod:`~audit_stream.dashboard.overview`: all of the above for the overview page;
* :mod:`~audit_stream.dashboard.endpoints`: webhook endpoints' health, queues, messages and attempts;
* :mod:`~audit_stream.dashboard.retention`: policies, runs and the next scheduled run;
* :mod:`~audit_stream.dashboard.feed`: the change feed, filtered, by keyset page
  (:mod:`~audit_stream.dashboard.paging`).

Nothing counts a whole big table: backlogs are counted up to
:data:`BACKLOG_EXACT` per lane and queues up to :data:`QUEUE_CAP` per endpoint
and status, then estimated ("≈"); lists are paginated by keyset (``?before=``),
never with ``OFFSET``/``COUNT``; informative totals come from
``pg_class.reltuples``.
"""

from __future__ import annotations

from audit_stream.dashboard.endpoints import (
    _ATTEMPTS_24H_SQL,
    QUEUE_CAP,
    EndpointHealth,
    age,
    attempts,
    capped,
    decode_cursor,
    encode_cursor,
    endpoint_health,
    estimate_messages,
    message_page,
    queue_sql,
)
from audit_stream.dashboard.feed import USER_CONTEXTS_INLINE, changes, event_labels, tracked_models
from audit_stream.dashboard.folds import Latency, Throughput, latency, throughput
from audit_stream.dashboard.overview import Overview, overview
from audit_stream.dashboard.paging import PAGE_SIZE, Page
from audit_stream.dashboard.processes import (
    WORKER_ALIVE_SECONDS,
    OpenTransaction,
    Process,
    oldest_transaction,
    processes,
)
from audit_stream.dashboard.reading import estimate_rows, reading
from audit_stream.dashboard.reading import rows as _rows
from audit_stream.dashboard.retention import Retention, retention, retention_run_dict, retention_runs
from audit_stream.dashboard.stream import (
    BACKLOG_EXACT,
    LANE_STALLED_SECONDS,
    Lane,
    StreamTable,
    stream_tables,
)

__all__ = [
    "BACKLOG_EXACT",
    "LANE_STALLED_SECONDS",
    "PAGE_SIZE",
    "QUEUE_CAP",
    "USER_CONTEXTS_INLINE",
    "WORKER_ALIVE_SECONDS",
    "_ATTEMPTS_24H_SQL",
    "EndpointHealth",
    "Lane",
    "Latency",
    "OpenTransaction",
    "Overview",
    "Page",
    "Process",
    "Retention",
    "StreamTable",
    "Throughput",
    "_rows",
    "age",
    "attempts",
    "capped",
    "changes",
    "decode_cursor",
    "encode_cursor",
    "endpoint_health",
    "estimate_messages",
    "estimate_rows",
    "event_labels",
    "latency",
    "message_page",
    "oldest_transaction",
    "overview",
    "processes",
    "queue_sql",
    "reading",
    "retention",
    "retention_run_dict",
    "retention_runs",
    "stream_tables",
    "throughput",
    "tracked_models",
]
