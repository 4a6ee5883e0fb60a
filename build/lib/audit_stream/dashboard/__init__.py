"""The operator dashboard: the stream, webhooks, retention and the change feed, in the browser.

* :mod:`~audit_stream.dashboard.access`: who may see it (staff with
  ``audit_stream.view_dashboard``), and the metrics bearer token;
* :mod:`~audit_stream.dashboard.queries`: every figure, read with bounded,
  indexed queries;
* :mod:`~audit_stream.dashboard.charts`: the fold throughput chart, drawn as SVG;
* :mod:`~audit_stream.dashboard.metrics`: the Prometheus collector;
* :mod:`~audit_stream.dashboard.views`: the pages, the JSON endpoint and the actions.

Mounted with ``path("audit-stream/", include("audit_stream.urls"))``.
"""
