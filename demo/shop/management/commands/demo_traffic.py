"""``manage.py demo_traffic``: a steady stream of realistic changes to the shop."""

import math
import random
import signal
import threading
import time

from django.core.management.base import BaseCommand, CommandError
from django.template.defaultfilters import pluralize

from demo.shop.models import Product
from demo.shop.traffic import Traffic

#: Seconds between progress lines when running until stopped.
REPORT_EVERY = 10
#: When the database stalls for longer than this, the lost time is not made
#: up with a burst of changes: the schedule restarts from now.
MAX_LAG = 1.0


class Command(BaseCommand):
    help = (
        "Simulate shop traffic: sign-ups, orders, status changes, price edits, restocks, imports"
        " and deletions, each inside an audit_stream context (user, url, request_id), at a steady"
        " rate. Runs for --duration seconds, or until Ctrl-C or SIGTERM."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--rate",
            type=float,
            default=5.0,
            help="Changes (simulated requests) per second. Default: 5.",
        )
        parser.add_argument(
            "--duration",
            type=float,
            default=0.0,
            help="Seconds to run. Default: 0, run until interrupted (Ctrl-C or SIGTERM).",
        )
        parser.add_argument(
            "--seed",
            type=int,
            default=None,
            help="Random seed, to repeat the same sequence of operations on the same data.",
        )

    def handle(self, *args, rate, duration, seed, **options):
        if not math.isfinite(rate) or rate <= 0:
            raise CommandError(f"--rate must be a positive number of changes per second, not {rate:g}.")
        if not math.isfinite(duration) or duration < 0:
            raise CommandError(
                f"--duration must be a number of seconds, or 0 to run until stopped, not {duration:g}."
            )
        if not Product.objects.exists():
            raise CommandError("The shop has no products: run `manage.py demo_setup` first.")

        self.traffic = Traffic(random.Random(seed))
        self.target = rate
        self.stopping = threading.Event()
        self.started = time.monotonic()
        previous = self.handle_signals()
        try:
            self.run(rate, duration)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            self.report()

    def handle_signals(self):
        """Stop after the current change on SIGINT or SIGTERM; a second one stops at once."""

        def stop(signum, frame):
            if self.stopping.is_set():
                raise KeyboardInterrupt
            self.stopping.set()

        if threading.current_thread() is not threading.main_thread():
            return {}  # e.g. call_command() from a thread: signals are not ours to handle
        return {signum: signal.signal(signum, stop) for signum in (signal.SIGINT, signal.SIGTERM)}

    def run(self, rate, duration):
        """Play changes on a fixed schedule: the n-th is due ``n / rate`` seconds after the start."""
        interval = 1 / rate
        anchor, scheduled = self.started, 0
        deadline = self.started + duration if duration else math.inf
        next_report = self.started + REPORT_EVERY if not duration else math.inf
        while not self.stopping.is_set():
            now = time.monotonic()
            if now >= next_report:
                self.report()
                next_report += REPORT_EVERY
            if now >= deadline:
                break
            due = anchor + scheduled * interval
            if now < due:
                self.stopping.wait(min(due, deadline, next_report) - now)
                continue
            if now - due > MAX_LAG:
                anchor, scheduled = now, 0
            self.traffic.step()
            scheduled += 1

    def report(self):
        """One line: the changes done by kind, and the rate achieved."""
        elapsed = time.monotonic() - self.started
        counts = self.traffic.counts
        total = counts.total()
        kinds = ", ".join(f"{kind} {count}" for kind, count in counts.most_common()) or "none"
        achieved = total / elapsed if elapsed > 0 else 0.0
        self.stdout.write(
            f"demo_traffic: {total} change{pluralize(total)} in {elapsed:.1f} s ({achieved:.2f}/s, target"
            f" {self.target:g}/s): {kinds}"
        )
        self.stdout.flush()
