"""Prometheus metrics, read from the database on every scrape.

A custom collector in a private registry (never the global one, so nothing
else a process registers leaks into ``/audit-stream/metrics``):

=================================================  =======  ===============================================
``audit_stream_backlog_events{table}``             gauge    unfolded events (estimated past
                                                            ``BACKLOG_EXACT`` a lane)
``audit_stream_lag_seconds{table}``                gauge    age of the oldest unfolded event (0: none)
``audit_stream_folded_events_total{table}``        counter  events folded (``Checkpoint.folded``)
``audit_stream_lane_backlog_events{table,lane}``   gauge    unfolded events of one fold lane
``audit_stream_lane_lag_seconds{table,lane}``      gauge    age of the lane's oldest unfolded event
``audit_stream_lane_folded_events_total``          counter  events the lane folded, by ``table``, ``lane``
``audit_stream_lane_checkpoint_age_seconds``       gauge    seconds since the lane's checkpoint moved, by
                                                            ``table`` and ``lane`` (no sample: never)
``audit_stream_lane_stalled{table,lane}``          gauge    1: events wait, the checkpoint stands still
``audit_stream_webhook_deliveries_total``          counter  delivery attempts by ``endpoint`` and ``outcome``
``audit_stream_webhook_messages{status}``          gauge    messages by status (estimated past 100 per
                                                            endpoint)
``audit_stream_sink_messages{sink,status}``        gauge    sink messages owed (pending, sending) or dead
``audit_stream_sink_deliveries_total``             counter  sink messages delivered and attempts failed,
                                                            by ``sink`` and ``outcome``
``audit_stream_pruned_rows_total{table}``          counter  rows deleted by retention (dry runs excluded)
``audit_stream_processes_alive{kind}``             gauge    stream processes with a recent heartbeat
=================================================  =======  ===============================================

Every gauge and counter is recomputed from the tables: a process restart
loses nothing, and any number of web processes report the same values. The
counters only grow: they are kept in rows retention never prunes (the
checkpoints, each endpoint's and sink's lifetime counts, the retention runs),
never counted from rows it deletes. Deleting an endpoint ends its series.

The per-table series are the sums (backlog, folded) and the worst (lag) of the
table's lanes; every table has at least lane ``"0"``, and ``FOLD_LANES`` gives
a table more. A lane left behind while the others fold shows in its own
series: alert on ``audit_stream_lane_stalled == 1`` (events waited
``LANE_STALLED_SECONDS`` and the lane's checkpoint did not move for as long).
A re-laned table's series change lanes.
"""

from __future__ import annotations

from collections import Counter

from django.db import DEFAULT_DB_ALIAS
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import choose_encoder

from audit_stream.dashboard import queries, sinks
from audit_stream.webhooks.models import WebhookMessage

__all__ = ["StreamCollector", "registry", "render"]

# Delivery attempts ever made, per endpoint and outcome: counters kept on the
# endpoint row by the delivery loop (audit_stream.webhooks.delivery._record).
_DELIVERIES_SQL = "SELECT id, attempts_succeeded, attempts_failed FROM audit_stream_webhookendpoint"

#: Messages of one endpoint and status counted exactly up to this many; above,
#: the planner's estimate. Counting reads each message's row (without a vacuum
#: an index cannot answer alone): 10,000 a status and endpoint cost 2.4 s at
#: 1,000,000 messages, the rows being scattered over the whole table.
MESSAGES_EXACT = queries.QUEUE_CAP

# Per endpoint and status, a range of the (endpoint, status, created_at)
# index, counted up to MESSAGES_EXACT. Each status is a constant of its own
# subquery: with the status as a column of a join, the planner chose to walk
# the time index and filter.
_MESSAGES_SQL = (
    "SELECT ep.id, "
    + ", ".join(
        "(SELECT count(*) FROM (SELECT 1 FROM audit_stream_webhookmessage AS m"
        f" WHERE m.endpoint_id = ep.id AND m.status = %({status})s LIMIT %(cap)s) AS capped)"
        for status, _ in WebhookMessage.STATUSES
    )
    + " FROM audit_stream_webhookendpoint AS ep ORDER BY ep.id"
)


def _messages_by_status(using: str) -> dict[str, int]:
    """Messages per status over every endpoint: exact up to MESSAGES_EXACT each, estimated above."""
    statuses = [status for status, _ in WebhookMessage.STATUSES]
    params = {"cap": MESSAGES_EXACT, **{status: status for status in statuses}}
    counts, capped = {}, []
    for endpoint_id, *numbers in queries._rows(_MESSAGES_SQL, params, using):
        for status, number in zip(statuses, numbers, strict=True):
            counts[endpoint_id, status] = number
            if number >= MESSAGES_EXACT:
                capped.append((endpoint_id, status))
    for pair, estimate in zip(capped, queries.estimate_messages(capped, using), strict=True):
        counts[pair] = max(estimate, MESSAGES_EXACT)
    totals = dict.fromkeys(statuses, 0)
    for (_, status), number in counts.items():
        totals[status] += number
    return totals


# Rows deleted per table over every real (not dry) retention run.
_PRUNED_SQL = """
SELECT r.key, sum(r.value::bigint)::bigint
FROM audit_stream_retentionrun AS run, jsonb_each_text(run.rows) AS r
WHERE NOT run.dry_run AND r.value ~ '^[0-9]+$'
GROUP BY r.key
"""


class StreamCollector:
    """Collects audit_stream's metrics from the database ``using`` at scrape time."""

    def __init__(self, using: str = DEFAULT_DB_ALIAS) -> None:
        self.using = using

    def _families(self):
        return {
            "backlog": GaugeMetricFamily(
                "audit_stream_backlog_events",
                f"Committed events not folded yet (exact up to {queries.BACKLOG_EXACT}, estimated above).",
                labels=["table"],
            ),
            "lag": GaugeMetricFamily(
                "audit_stream_lag_seconds",
                "Age of the oldest committed event not folded yet (0 when caught up).",
                labels=["table"],
            ),
            "folded": CounterMetricFamily(
                "audit_stream_folded_events", "Events folded into the change feed.", labels=["table"]
            ),
            "lane_backlog": GaugeMetricFamily(
                "audit_stream_lane_backlog_events",
                f"Committed events not folded yet, per fold lane (exact up to {queries.BACKLOG_EXACT}).",
                labels=["table", "lane"],
            ),
            "lane_lag": GaugeMetricFamily(
                "audit_stream_lane_lag_seconds",
                "Age of the fold lane's oldest committed event not folded yet (0 when caught up).",
                labels=["table", "lane"],
            ),
            "lane_folded": CounterMetricFamily(
                "audit_stream_lane_folded_events", "Events the fold lane folded.", labels=["table", "lane"]
            ),
            "lane_checkpoint_age": GaugeMetricFamily(
                "audit_stream_lane_checkpoint_age_seconds",
                "Seconds since the fold lane's checkpoint last moved (no sample: never folded).",
                labels=["table", "lane"],
            ),
            "lane_stalled": GaugeMetricFamily(
                "audit_stream_lane_stalled",
                f"1 when events have waited {queries.LANE_STALLED_SECONDS:.0f} s on the fold lane and its"
                " checkpoint has not moved for as long (its worker stuck or gone), else 0.",
                labels=["table", "lane"],
            ),
            "deliveries": CounterMetricFamily(
                "audit_stream_webhook_deliveries",
                "Webhook delivery attempts ever made, by endpoint and outcome (succeeded: a 2xx answer).",
                labels=["endpoint", "outcome"],
            ),
            "messages": GaugeMetricFamily(
                "audit_stream_webhook_messages",
                f"Webhook messages, by status (exact up to {MESSAGES_EXACT} per endpoint and status,"
                " the planner's estimate above).",
                labels=["status"],
            ),
            "sink_messages": GaugeMetricFamily(
                "audit_stream_sink_messages",
                f"Sink messages owed (pending, sending) or dead, by sink (counted up to {queries.QUEUE_CAP})",
                labels=["sink", "status"],
            ),
            "sink_deliveries": CounterMetricFamily(
                "audit_stream_sink_deliveries",
                "Sink messages ever delivered (succeeded) and publish attempts failed, by sink.",
                labels=["sink", "outcome"],
            ),
            "pruned": CounterMetricFamily(
                "audit_stream_pruned_rows", "Rows deleted by retention (dry runs excluded).", labels=["table"]
            ),
            "alive": GaugeMetricFamily(
                "audit_stream_processes_alive",
                "Stream processes whose heartbeat is recent, by kind.",
                labels=["kind"],
            ),
        }

    def describe(self):
        """The metric families without samples: registering never touches the database."""
        return list(self._families().values())

    def collect(self):
        with queries.reading(self.using):
            families = self._collect()
        yield from families.values()

    def _collect(self) -> dict:
        families = self._families()
        for table in queries.stream_tables(self.using):
            families["backlog"].add_metric([table.event_table], table.backlog)
            families["lag"].add_metric([table.event_table], table.lag_seconds or 0.0)
            families["folded"].add_metric([table.event_table], table.folded_total)
            for lane in table.lanes:
                labels = [table.event_table, str(lane.lane)]
                families["lane_backlog"].add_metric(labels, lane.backlog)
                families["lane_lag"].add_metric(labels, lane.lag_seconds or 0.0)
                families["lane_folded"].add_metric(labels, lane.folded_total)
                if lane.checkpoint_age_seconds is not None:
                    families["lane_checkpoint_age"].add_metric(labels, lane.checkpoint_age_seconds)
                families["lane_stalled"].add_metric(labels, 1 if lane.stalled else 0)

        for endpoint_id, succeeded, failed in queries._rows(_DELIVERIES_SQL, using=self.using):
            families["deliveries"].add_metric([str(endpoint_id), "succeeded"], succeeded)
            families["deliveries"].add_metric([str(endpoint_id), "failed"], failed)

        statuses = _messages_by_status(self.using)
        for status, _ in WebhookMessage.STATUSES:
            families["messages"].add_metric([status], statuses.get(status, 0))

        for health in sinks.sink_health(using=self.using):
            name = health.sink.name
            for status in ("pending", "sending", "dead"):
                families["sink_messages"].add_metric([name, status], getattr(health, status))
            families["sink_deliveries"].add_metric([name, "succeeded"], health.sink.messages_delivered)
            families["sink_deliveries"].add_metric([name, "failed"], health.sink.attempts_failed)

        for table, rows in queries._rows(_PRUNED_SQL, using=self.using):
            families["pruned"].add_metric([table], rows)

        alive = Counter(p.kind for p in queries.processes(self.using) if p.alive)
        for kind in sorted({"listener", "worker", "beat", *alive}):
            families["alive"].add_metric([kind], alive.get(kind, 0))
        return families


#: The dashboard's registry: only :class:`StreamCollector`.
registry = CollectorRegistry(auto_describe=False)
registry.register(StreamCollector())


def render(accept: str = "") -> tuple[bytes, str]:
    """The exposition of :data:`registry` and its content type, in the format ``accept`` asks for.

    Prometheus text format 0.0.4 by default; OpenMetrics when the scraper asks for it.
    """
    encoder, content_type = choose_encoder(accept)
    return encoder(registry), content_type
