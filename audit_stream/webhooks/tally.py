"""Delivery attempts counted per endpoint and hour, as they are recorded.

The dashboard's 24-hour figures and the metrics' delivery counters read these
counts (a few rows per endpoint and day) instead of counting the attempts
themselves (a million rows a day at 12 messages a second). A statement
trigger on ``audit_stream_webhookattempt`` adds every inserted batch of
attempts to its endpoint's hour, in the inserting transaction: however the
attempts are written (delivery's one INSERT per batch, the ORM, SQL), the
counts agree with them. Retention prunes attempts, never the counts: the
delivery counters only grow, as Prometheus counters must.
"""

from __future__ import annotations

__all__ = ["CREATE_SQL", "DROP_SQL", "LAST_24_HOURS_SQL", "TOTALS_SQL"]

# Keys are locked in (endpoint, hour) order (ORDER BY), so two batches never
# wait on each other in opposite orders. `last_error` is the newest failure's.
CREATE_SQL = """
CREATE FUNCTION _audit_stream_tally_attempts() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO audit_stream_webhookhour AS h
        (endpoint_id, hour, attempts, succeeded, last_error, last_error_at)
    SELECT m.endpoint_id, date_trunc('hour', a.attempted_at), count(*), count(*) FILTER (WHERE a.succeeded),
           coalesce((array_agg(a.error ORDER BY a.attempted_at DESC) FILTER (WHERE NOT a.succeeded))[1], ''),
           max(a.attempted_at) FILTER (WHERE NOT a.succeeded)
    FROM _new AS a
    JOIN audit_stream_webhookmessage AS m ON m.id = a.message_id
    GROUP BY 1, 2
    ORDER BY 1, 2
    ON CONFLICT (endpoint_id, hour) DO UPDATE SET
        attempts = h.attempts + excluded.attempts,
        succeeded = h.succeeded + excluded.succeeded,
        last_error = CASE WHEN excluded.last_error_at >= h.last_error_at OR h.last_error_at IS NULL
                          THEN coalesce(nullif(excluded.last_error, ''), h.last_error)
                          ELSE h.last_error END,
        last_error_at = greatest(h.last_error_at, excluded.last_error_at);
    RETURN NULL;
END
$$;
CREATE TRIGGER audit_stream_tally_attempts
    AFTER INSERT ON audit_stream_webhookattempt
    REFERENCING NEW TABLE AS _new
    FOR EACH STATEMENT EXECUTE FUNCTION _audit_stream_tally_attempts();

-- Attempts recorded before the counts existed.
INSERT INTO audit_stream_webhookhour (endpoint_id, hour, attempts, succeeded, last_error, last_error_at)
SELECT m.endpoint_id, date_trunc('hour', a.attempted_at), count(*), count(*) FILTER (WHERE a.succeeded),
       coalesce((array_agg(a.error ORDER BY a.attempted_at DESC) FILTER (WHERE NOT a.succeeded))[1], ''),
       max(a.attempted_at) FILTER (WHERE NOT a.succeeded)
FROM audit_stream_webhookattempt AS a
JOIN audit_stream_webhookmessage AS m ON m.id = a.message_id
GROUP BY 1, 2;
"""

DROP_SQL = """
DROP TRIGGER IF EXISTS audit_stream_tally_attempts ON audit_stream_webhookattempt;
DROP FUNCTION IF EXISTS _audit_stream_tally_attempts();
"""

# Per endpoint, the attempts of the current hour and the 23 before it: how
# many, how many succeeded, and the newest failure's error and time.
LAST_24_HOURS_SQL = """
SELECT endpoint_id, sum(attempts)::bigint, sum(succeeded)::bigint,
       (array_agg(last_error ORDER BY last_error_at DESC) FILTER (WHERE last_error_at IS NOT NULL))[1],
       max(last_error_at)
FROM audit_stream_webhookhour
WHERE hour > date_trunc('hour', now()) - interval '24 hours'
  AND (%(endpoint)s::bigint IS NULL OR endpoint_id = %(endpoint)s::bigint)
GROUP BY endpoint_id
"""

# Every attempt ever recorded, by outcome: (succeeded, count) rows.
TOTALS_SQL = """
SELECT true, coalesce(sum(succeeded), 0)::bigint FROM audit_stream_webhookhour
UNION ALL
SELECT false, coalesce(sum(attempts - succeeded), 0)::bigint FROM audit_stream_webhookhour
"""
