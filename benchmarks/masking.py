"""What masking costs the fold: the same events folded with and without masked fields, side by side.

Usage::

    python -m benchmarks.masking [--database-url URL] [--events 40000] [--rounds 3]

It drops and recreates its own database (default ``audit_stream_bench_masking``)
with the test suite's models, writes ``--events`` events of
``testapp.Patient`` (``track(mask=["ssn"])``: half inserts, half updates of
every field), then folds them again and again, alternating three modes in each
round so that a busy machine weighs on all of them alike:

* ``unmasked``: masking switched off (``masking.columns_of`` returns nothing);
* ``"***"``: ``ssn`` masked, the default;
* ``hmac``: ``ssn`` and ``email`` masked with ``MASK_KEY`` (two keyed hashes per event).

Before each fold the table's ``Change`` rows and checkpoint are deleted, so
each fold does the same work. Prints the events folded per second (median of
the rounds) and the JSON of every run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/audit_stream_bench_masking"
TABLE = "testapp_patientevent"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default=DEFAULT_DATABASE_URL)
    parser.add_argument("--events", type=int, default=40000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    import psycopg

    server, _, name = args.database_url.rpartition("/")
    with psycopg.connect(f"{server}/postgres", autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"')
    os.environ["DATABASE_URL"] = args.database_url
    os.environ["DJANGO_SETTINGS_MODULE"] = "tests.settings"

    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connection

    from audit_stream import masking
    from audit_stream.stream import fold
    from tests.testapp.models import Patient

    call_command("migrate", verbosity=0)
    half = args.events // 2
    Patient.objects.bulk_create(
        Patient(name=f"patient {i}", ssn=f"{i:09d}", email=f"p{i}@example.com") for i in range(half)
    )
    Patient.objects.update(visits=1, ssn="000-00-0000", email="x@example.com", name="renamed")

    columns_of = masking.columns_of
    quiet = {"FOLD_LINGER": 0, "NOTIFY": False}  # time the folding, not the idle wait after it
    modes = {
        "unmasked": (quiet, lambda model: []),
        '"***"': (quiet, columns_of),
        "hmac": (
            {**quiet, "MASK_KEY": "a-benchmark-mask-key", "MASK": {"testapp.Patient": ["email"]}},
            columns_of,
        ),
    }
    runs: dict[str, list[float]] = {mode: [] for mode in modes}
    for _ in range(args.rounds):
        for mode, (setting, columns) in modes.items():
            with connection.cursor() as cursor:
                cursor.execute("DELETE FROM audit_stream_change WHERE event_table = %s", [TABLE])
                cursor.execute("DELETE FROM audit_stream_checkpoint WHERE event_table = %s", [TABLE])
                cursor.execute("VACUUM ANALYZE audit_stream_change")
            settings.AUDIT_STREAM = setting
            masking.columns_of = columns
            try:
                start = time.perf_counter()
                result = fold.fold(TABLE, batch_size=5000, max_seconds=600)
                seconds = time.perf_counter() - start
            finally:
                masking.columns_of = columns_of
            assert result.folded == 2 * half, result
            runs[mode].append(result.folded / seconds)
    for mode, rates in runs.items():
        each = ", ".join(f"{r:,.0f}" for r in rates)
        print(f"{mode:>9}: {statistics.median(rates):>9,.0f} events/s  (runs: {each})")
    print(json.dumps({"events": 2 * half, "rounds": args.rounds, "events_per_second": runs}))


if __name__ == "__main__":
    main()
