"""The soak benchmark: steady mixed writes with webhooks on, for minutes or hours, on a cluster of its own.

Usage::

    python -m benchmarks.soak                           # 10 minutes, autovacuum off then on: BENCHMARKS.md
    python -m benchmarks.soak --minutes 60              # the hour-long run
    python -m benchmarks.soak --minutes 2 --no-report   # a short run, printed only

For each autovacuum setting (``--autovacuum off``, ``on`` or ``both``, the
default) it creates a PostgreSQL cluster of its own (``initdb`` in a
temporary directory, run as the ``postgres`` user when started as root, on a
free loopback port, ``autovacuum`` set as asked), so the setting is the
cluster's and no other database shares it (it logs every autovacuum, every lock
wait over 100 ms, every statement over 200 ms and the plan of every statement,
a trigger's included, over 150 ms, and its log is kept in the temporary directory when
the run ends: the path is printed). Then, in that cluster's database
``audit_stream_bench_soak``, with Redis database ``--redis-url`` (flushed):

* a receiver on loopback (``benchmarks.perfapp.receiver --secret``) that
  verifies every request's signature with ``standardwebhooks``;
* one endpoint for it, a Celery worker (``-c 2``) and the listener;
* a writer (``benchmarks.perfapp.mixer``) of steady mixed transactions at
  ``--rate`` per second, each in its own context: inserts, updates, deletes.

Every 10 s it samples the resident memory of each child's process group,
the latency of the changes folded in the last 10 s (from the writing
transaction's start, ``Change.created_at``, to the fold's, ``folded_at``),
the latency of the webhooks received in that time (from the transaction's
start to the receiver's arrival, both on this machine's clock) and the
messages still owed (estimated: changes folded less messages received; the
sampler's queries cost an index probe or less at any history size, so that it
does not load the machine it measures). When the writer stops, it waits for
the stream to drain and checks exactly: every event folded once (events = changes), every change
one message, every message delivered and received exactly once, every
signature valid.

It reports, per setting, each minute's figures and two verdicts: the p99 of
the last window within 1.2x of the first (a window is 10 minutes, or a fifth
of a shorter run; the p99 of every change and every webhook in the window,
pooled from each sample's histogram of whole milliseconds, with the worst
10-second sample's p99 beside it), and the trend of each process's memory (a
least-squares slope, MB per hour).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SECTION = "## Soak (benchmarks/soak.py)"
COMMAND = "python -m benchmarks.soak"
DATABASE = "audit_stream_bench_soak"
SAMPLE_SECONDS = 10.0
#: The issue's bound: the last window's p99 within this factor of the first's.
P99_DRIFT = 1.2


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.split("\n")[0])
    parser.add_argument(
        "--minutes", type=float, default=10.0, help="of steady writes per setting (60: the long run)"
    )
    parser.add_argument("--rate", type=float, default=300.0, help="transactions per second")
    parser.add_argument(
        "--connections", type=int, default=4, help="the writer's connections, sending transactions in turn"
    )
    parser.add_argument("--autovacuum", choices=["off", "on", "both"], default="both")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/13", help="flushed!")
    parser.add_argument("--no-report", action="store_true", help="print only, leave BENCHMARKS.md alone")
    parser.add_argument("--one", choices=["off", "on"], help=argparse.SUPPRESS)  # a child run
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--json", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# --------------------------------------------------------------------------- the cluster


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_postgres(args: list[str]) -> list[str]:
    """PostgreSQL's server refuses to run as root: run its programs as ``postgres`` then."""
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args


@contextlib.contextmanager
def cluster(autovacuum: str):
    """A fresh cluster on a free loopback port, ``autovacuum`` as asked; yields the port, always stopped."""
    directory = Path(tempfile.mkdtemp(prefix="audit_stream_soak_"))
    data = directory / "data"
    if os.geteuid() == 0:
        shutil.chown(directory, "postgres", "postgres")
    port = _free_port()
    subprocess.run(_as_postgres(["initdb", "-D", str(data), "-U", "postgres", "--auth=trust"]),
                   check=True, capture_output=True)  # fmt: skip
    options = (
        f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={directory}"
        f" -c autovacuum={autovacuum} -c max_connections=100"
        # What a latency spike can be matched against afterwards: every autovacuum and
        # autoanalyze, every lock wait over 100 ms, every statement over 200 ms, and the plan
        # (with the buffers it read) of every statement over 150 ms, a trigger's statements
        # included (auto_explain; its timing off, so that it does not slow what it watches).
        " -c log_autovacuum_min_duration=0 -c log_lock_waits=on -c deadlock_timeout=100ms"
        " -c log_min_duration_statement=200 -c log_checkpoints=on -c log_line_prefix='%m [%p] '"
        " -c shared_preload_libraries=auto_explain -c auto_explain.log_min_duration=150"
        " -c auto_explain.log_analyze=on -c auto_explain.log_timing=off -c auto_explain.log_buffers=on"
        " -c auto_explain.log_nested_statements=on"
    )
    log_file = directory / "postgres.log"
    start = ["pg_ctl", "-D", str(data), "-o", options, "-l", str(log_file), "-w", "start"]
    subprocess.run(_as_postgres(start), check=True, capture_output=True)
    try:
        yield port
    finally:
        subprocess.run(
            _as_postgres(["pg_ctl", "-D", str(data), "-m", "fast", "-w", "stop"]), capture_output=True
        )
        kept = (
            Path(tempfile.gettempdir())
            / f"audit_stream_soak_postgres_{autovacuum}_{time.strftime('%H%M%S')}.log"
        )
        with contextlib.suppress(OSError):
            shutil.copyfile(log_file, kept)
            print(f"PostgreSQL's log of the autovacuum {autovacuum} run kept in {kept}", flush=True)
        shutil.rmtree(directory, ignore_errors=True)


# --------------------------------------------------------------------------- sampling


def _group_rss_mb(pgid: int) -> float:
    """Resident memory of every process of a process group, in MB."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            if int(fields[2]) != pgid:  # the 5th field of stat: the process group
                continue
            total += int((entry / "statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            continue
    return total / 2**20


def _percentiles(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return pick(0.5) * 1000, pick(0.99) * 1000


def _histogram(values: list[float]) -> dict[str, int]:
    """Latencies in seconds, counted per whole millisecond (JSON keys): windows pool them exactly to 1 ms."""
    counts: dict[str, int] = {}
    for value in values:
        key = str(int(value * 1000))
        counts[key] = counts.get(key, 0) + 1
    return counts


def _pooled_p99(histograms: list[dict[str, int]]) -> float | None:
    """The p99 in ms of every latency counted in ``histograms`` (the upper edge of its millisecond)."""
    pooled: dict[int, int] = {}
    for histogram in histograms:
        for key, n in histogram.items():
            pooled[int(key)] = pooled.get(int(key), 0) + n
    total = sum(pooled.values())
    if not total:
        return None
    rank, seen = min(total - 1, int(0.99 * total)), 0
    for ms in sorted(pooled):
        seen += pooled[ms]
        if seen > rank:
            return ms + 1.0
    return None


_FOLDED_SQL = """
SELECT extract(epoch FROM folded_at - created_at)::float8 FROM audit_stream_change
WHERE created_at >= now() - interval '60 seconds' AND folded_at >= now() - %(window)s * interval '1 second'
"""

# The sampler's own queries must cost the same at any history size, or the soak measures its
# own growing load: with the tables never analysed (autovacuum off) the planner took
# `event_id = ANY(3,000 ids)` for a range of the unique index over the whole table (2.4-3.8 s
# every 10 s after 15 minutes) and the owed count for a sequential scan of the messages
# (200 ms, growing). Each is written so that only an index probe answers it.

# The transaction's start of each event received: one probe of the (event_table, event_id)
# unique index per id. The LIMIT keeps the subquery a subquery: without it the planner may
# flatten it into a join, and once autovacuum has analysed the change table it chose a hash
# join over a sequential scan of every change (330 ms every 10 s at 170,000 changes, and
# growing: in the hours with autovacuum on, the drift the soak measured was partly its own).
_CREATED_SQL = """
SELECT i.id, extract(epoch FROM c.created_at)::float8
FROM unnest(%(ids)s::bigint[]) AS i (id)
CROSS JOIN LATERAL (
    SELECT created_at FROM audit_stream_change WHERE event_table = %(table)s AND event_id = i.id
    LIMIT 1
) AS c
"""

# The changes folded so far (each one message to the one endpoint): the change id
# sequence's last value, read in O(1). Messages owed are estimated as that less the
# receipts so far: an exact count of the messages by status reads every dead version
# of every message until a vacuum (120 ms after 6 minutes without one, and growing).
_FOLDED_SO_FAR_SQL = "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM audit_stream_change_id_seq"


class Sampler:
    """Every 10 s: memory of each child, fold and webhook latency of the last 10 s, messages owed."""

    def __init__(self, children: dict, received: Path) -> None:
        self.children = children
        self.receipts = 0
        self.received = received
        self.offset = 0
        self.samples: list[dict] = []
        self.started = time.monotonic()

    def _new_receipts(self) -> list[list[str]]:
        if not self.received.exists():
            return []
        with self.received.open() as f:
            f.seek(self.offset)
            text = f.read()
        complete = text[: text.rfind("\n") + 1]
        self.offset += len(complete.encode())
        return [line.split("\t") for line in complete.splitlines()]

    def sample(self) -> dict:
        from benchmarks.perfapp.harness import EVENTS, execute, scalar

        folded = [row[0] for row in execute(_FOLDED_SQL, {"window": SAMPLE_SECONDS})]
        receipts = self._new_receipts()
        created = dict(execute(_CREATED_SQL, {"table": EVENTS, "ids": [int(r[5]) for r in receipts if r[5]]}))
        webhooks = [float(r[0]) - created[int(r[5])] for r in receipts if r[5] and int(r[5]) in created]
        self.receipts += len(receipts)
        owed = scalar(_FOLDED_SO_FAR_SQL) - self.receipts  # an estimate (see _FOLDED_SO_FAR_SQL)
        sample = {
            "t": time.monotonic() - self.started,
            "rss_mb": {name: _group_rss_mb(proc.popen.pid) for name, proc in self.children.items()},
            "fold_ms": _percentiles(folded),
            "fold_histogram": _histogram(folded),
            "folded": len(folded),
            "webhook_ms": _percentiles(webhooks),
            "webhook_histogram": _histogram(webhooks),
            "received": len(receipts),
            "owed": owed,
            "load": os.getloadavg()[0],
        }
        self.samples.append(sample)
        return sample


# --------------------------------------------------------------------------- one run (a child process)


def run_one(args: argparse.Namespace) -> dict:
    """One soak on the cluster at ``args.port``, in this process; returns its results."""
    from benchmarks.perfapp import harness
    from benchmarks.perfapp.harness import EVENTS, Children, count, log, scalar

    url = f"postgres://postgres@127.0.0.1:{args.port}/{DATABASE}"
    harness.configure_environment(url, args.redis_url, {"WEBHOOK_ALLOWED_NETWORKS": ["127.0.0.0/8"]})
    import django

    django.setup()
    import redis

    from audit_stream.webhooks.models import WebhookEndpoint, new_secret

    harness.recreate_database()
    harness.migrate(False, COMMAND)
    redis.Redis.from_url(args.redis_url).flushdb()
    log_dir = Path(tempfile.mkdtemp(prefix="audit_stream_soak_logs_"))
    children = Children(log_dir)
    received = log_dir / "received.tsv"
    secret = new_secret()
    seconds = args.minutes * 60
    try:
        args_receiver = [sys.executable, "-m", "benchmarks.perfapp.receiver", "--out", str(received)]
        receiver = children.start("receiver", [*args_receiver, "--secret", secret], harness.child_env(),
                                  "receiver: listening")  # fmt: skip
        port = int(receiver.wait_ready().rsplit(" ", 1)[1])
        WebhookEndpoint.objects.create(url=f"http://127.0.0.1:{port}/soak", secret=secret)
        worker = children.worker(2)
        listener = children.listener()
        mixer_out = log_dir / "mixer.json"
        mixer = children.start(
            "mixer",
            [sys.executable, "-m", "benchmarks.perfapp.mixer", "--rate", str(args.rate),
             "--seconds", str(seconds), "--out", str(mixer_out), "--connections", str(args.connections)],
            harness.child_env(None, "bench mixer"),
            "mixer: ready",
        )  # fmt: skip
        sampler = Sampler({"worker": worker, "listener": listener, "receiver": receiver}, received)
        next_at = time.monotonic() + SAMPLE_SECONDS
        while mixer.popen.poll() is None:
            time.sleep(max(0.0, next_at - time.monotonic()))
            next_at += SAMPLE_SECONDS
            s = sampler.sample()
            fold_p99, webhook_p99 = _ms(s["fold_ms"][1]), _ms(s["webhook_ms"][1])
            log(f"  {s['t']:.0f}s fold p99 {fold_p99} ms, webhook p99 {webhook_p99} ms, owed {s['owed']},"
                f" worker {s['rss_mb']['worker']:.0f} MB, load {s['load']:.1f}")  # fmt: skip
        written = json.loads(mixer_out.read_text())
        # Drain: every event folded and every message delivered, within 2 minutes.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            events, changes = count(EVENTS), count("audit_stream_change", "event_table = %s", [EVENTS])
            owed = count("audit_stream_webhookmessage", "status <> 'delivered'")
            if events == changes and owed == 0:
                break
            time.sleep(1)
        sampler.sample()
        rows = [line.split("\t") for line in received.read_text().splitlines()]
        ids = [row[2] for row in rows]
        messages = count("audit_stream_webhookmessage")
        checks = {
            "events": count(EVENTS),
            "changes": count("audit_stream_change", "event_table = %s", [EVENTS]),
            "messages": messages,
            "delivered": count("audit_stream_webhookmessage", "status = 'delivered'"),
            "received": len(ids),
            "received_distinct": len(set(ids)),
            "unknown_received": len(set(ids) - {f"msg_{u.replace('-', '')}" for u in _message_ids()}),
            "bad_signatures": sum(1 for row in rows if row[6] != "ok"),
            "attempts": count("audit_stream_webhookattempt"),
            # Why an attempt failed (a request that timed out on the sender's side may still have
            # arrived: at least once, a duplicate the receiver sees).
            "failed_attempts": dict(
                harness.execute(
                    "SELECT error, count(*) FROM audit_stream_webhookattempt"
                    " WHERE NOT succeeded GROUP BY error"
                )
            ),
            "dead_tuples_events": scalar(
                "SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = %s", [EVENTS]
            ),
            "autovacuum_runs": scalar(
                "SELECT coalesce(sum(autovacuum_count), 0)::bigint FROM pg_stat_user_tables"
            ),
        }
        checks["exact"] = (
            checks["events"] == checks["changes"] == messages == checks["delivered"]
            == checks["received"] == checks["received_distinct"]
            and checks["unknown_received"] == 0 and checks["bad_signatures"] == 0
        )  # fmt: skip
        return {"written": written, "samples": sampler.samples, "checks": checks}
    finally:
        children.stop()
        shutil.rmtree(log_dir, ignore_errors=True)


def _message_ids() -> list[str]:
    from benchmarks.perfapp.harness import execute

    return [str(row[0]) for row in execute("SELECT id FROM audit_stream_webhookmessage")]


# --------------------------------------------------------------------------- report


def _window(samples: list[dict], first: bool, seconds: float) -> list[dict]:
    end = max(s["t"] for s in samples)
    return [s for s in samples if (s["t"] <= seconds if first else s["t"] > end - seconds)]


def _slope_mb_per_hour(points: list[tuple[float, float]]) -> float:
    if len(points) < 2:
        return 0.0
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    return 0.0 if var == 0 else sum((t - mean_t) * (v - mean_v) for t, v in points) / var * 3600


def verdicts(result: dict, minutes: float) -> dict:
    """p99 drift (last window against the first) and memory trend per process."""
    samples = [s for s in result["samples"][:-1] if s["fold_ms"][1] is not None]  # the last: after the drain
    # A fifth of the run as it happened (a writer that fell behind runs longer than asked), at most 10 min.
    window = min(600.0, max((s["t"] for s in samples), default=minutes * 60) / 5)
    found = {"window_s": window}
    for key in ("fold_ms", "webhook_ms"):
        first, last = _window(samples, True, window), _window(samples, False, window)
        histogram = key.replace("_ms", "_histogram")
        a, b = _pooled_p99([s[histogram] for s in first]), _pooled_p99([s[histogram] for s in last])
        worst = [max((s[key][1] for s in w if s[key][1] is not None), default=None) for w in (first, last)]
        found[key] = {
            "first_p99": a,
            "last_p99": b,
            "ratio": (b / a) if a and b else None,
            "first_worst_sample_p99": worst[0],
            "last_worst_sample_p99": worst[1],
        }
    found["rss"] = {
        name: {
            "first_mb": samples[0]["rss_mb"][name] if samples else None,
            "last_mb": samples[-1]["rss_mb"][name] if samples else None,
            "mb_per_hour": _slope_mb_per_hour([(s["t"], s["rss_mb"][name]) for s in samples]),
        }
        for name in (samples[0]["rss_mb"] if samples else {})
    }
    return found


def _ms(value) -> str:
    return "—" if value is None else f"{value:,.0f}"


def _ratio(value) -> str:
    return "—" if value is None else f"{value:.2f}x"


def markdown(args: argparse.Namespace, results: dict[str, dict]) -> str:
    lines = [
        SECTION,
        "",
        f"Measured {dt.date.today():%Y-%m-%d} with `{COMMAND} --minutes {args.minutes:g} --rate {args.rate:g}"
        f" --connections {args.connections} --autovacuum {args.autovacuum}` on {os.cpu_count()} cores (the"
        " load average, in the table, counts the soak's own writer, worker, listener, receiver and PostgreSQL"
        " with whatever else ran).",
        "Each setting ran on a PostgreSQL cluster of its own. Latency is from the writing transaction's"
        " start; p50/p99 per minute are the worst 10-second sample of the minute.",
        "",
    ]
    for setting, result in results.items():
        v = verdicts(result, args.minutes)
        c, w = result["checks"], result["written"]
        lines += [
            f"### autovacuum {setting}",
            "",
            f"Written: {sum(w['done'].values()):,} transactions in {w['elapsed']:.0f} s"
            f" ({', '.join(f'{n:,} {op}s' for op, n in w['done'].items())}); largest writer delay"
            f" {w['max_late'] * 1000:,.0f} ms. Autovacuum runs: {c['autovacuum_runs']}.",
            "",
            "| minute | fold p50 ms | fold p99 ms | webhook p50 ms | webhook p99 ms | owed, est. (max) |"
            " worker MB | listener MB | load |",
            "|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
        ]
        by_minute: dict[int, list[dict]] = {}
        for s in result["samples"][:-1]:
            by_minute.setdefault(int(s["t"] // 60), []).append(s)
        for minute, group in sorted(by_minute.items()):

            def worst(key, i, group=group):
                return max((s[key][i] for s in group if s[key][i] is not None), default=None)

            lines.append(
                f"| {minute + 1} | {_ms(worst('fold_ms', 0))} | {_ms(worst('fold_ms', 1))}"
                f" | {_ms(worst('webhook_ms', 0))} | {_ms(worst('webhook_ms', 1))}"
                f" | {max(s['owed'] for s in group):,} | {group[-1]['rss_mb']['worker']:.0f}"
                f" | {group[-1]['rss_mb']['listener']:.0f} | {max(s['load'] for s in group):.1f} |"
            )
        drift = [
            f"{name}: first {v['window_s'] / 60:.1f} min p99 {_ms(v[key]['first_p99'])} ms, last"
            f" {_ms(v[key]['last_p99'])} ms ({_ratio(v[key]['ratio'])};"
            f" bound {P99_DRIFT}x: {'met' if (v[key]['ratio'] or 99) <= P99_DRIFT else '**missed**'};"
            f" worst 10-second sample's p99 {_ms(v[key]['first_worst_sample_p99'])} →"
            f" {_ms(v[key]['last_worst_sample_p99'])} ms)"
            for name, key in (("fold", "fold_ms"), ("webhook", "webhook_ms"))
        ]
        memory = [f"{n} {m['first_mb']:.0f} → {m['last_mb']:.0f} MB ({m['mb_per_hour']:+.1f} MB/h)"
                  for n, m in v["rss"].items()]  # fmt: skip
        lines += [
            "",
            "Drift: " + "; ".join(drift) + ".",
            "Memory: " + ", ".join(memory) + ".",
            f"End checks ({'exact' if c['exact'] else '**FAILED**'}): {c['events']:,} events,"
            f" {c['changes']:,} changes, {c['messages']:,} messages, {c['delivered']:,} delivered,"
            f" {c['received']:,} received ({c['received_distinct']:,} distinct,"
            f" {c['unknown_received']} unknown),"
            f" {c['bad_signatures']} bad signatures, {c['attempts']:,} attempts"
            + (f" (failed: {c['failed_attempts']})" if c.get("failed_attempts") else "")
            + ".",
            "",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.one:  # a child: one setting, results to --json
        Path(args.json).write_text(json.dumps(run_one(args)))
        return
    settings = ["off", "on"] if args.autovacuum == "both" else [args.autovacuum]
    results = {}
    for setting in settings:
        with cluster(setting) as port, tempfile.NamedTemporaryFile(suffix=".json") as out:
            print(
                f"[{time.strftime('%H:%M:%S')}] autovacuum {setting}: cluster on port {port}", file=sys.stderr
            )
            subprocess.run(
                [sys.executable, "-m", "benchmarks.soak", "--one", setting, "--port", str(port),
                 "--json", out.name, "--minutes", str(args.minutes), "--rate", str(args.rate),
                 "--redis-url", args.redis_url, "--connections", str(args.connections)],
                check=True,
            )  # fmt: skip
            results[setting] = json.loads(Path(out.name).read_text())
    section = markdown(args, results)
    print(section)
    if not args.no_report:
        from benchmarks.sections import replace_section

        replace_section(SECTION, section)


if __name__ == "__main__":
    sys.exit(main())
