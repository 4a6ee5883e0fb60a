"""``manage.py sinks add|list|disable|enable|replay``: message-broker targets of the change feed."""

from __future__ import annotations

import json

from django.core.management.base import BaseCommand, CommandError
from django.db.models import Count, Q

from audit_stream.sinks import base, delivery
from audit_stream.sinks.models import Sink, SinkMessage
from audit_stream.webhooks import filters


class Command(BaseCommand):
    help = "Manage sinks (NATS JetStream, Redis Streams, RabbitMQ): add, list, disable, enable, replay."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

        add = sub.add_parser("add", help="Add a sink.")
        add.add_argument("name", help="A unique name (letters, digits, - and _).")
        add.add_argument("kind", choices=sorted(base.KINDS))
        add.add_argument(
            "target", help="nats://host:4222, redis://host:6379/0 or amqp://user:pass@host:5672/"
        )
        add.add_argument("--options", default="{}", help='Per kind, as JSON, e.g. \'{"stream": "AUDIT"}\'.')
        add.add_argument(
            "--model", action="append", default=[], help='Only this model ("app_label.model"); repeatable.'
        )
        add.add_argument("--label", action="append", default=[], help="Only this event label; repeatable.")
        add.add_argument(
            "--ordered",
            action="store_true",
            help="Per object, in order: an object's next change waits until the previous one was"
            " acknowledged or went dead (other objects keep flowing).",
        )

        sub.add_parser("list", help="List sinks with their messages by status.")
        for action, text in [
            ("disable", "Stop publishing to a sink (its messages wait)."),
            ("enable", "Resume publishing to a sink."),
            ("replay", "Make the dead messages of a sink due again."),
        ]:
            sub.add_parser(action, help=text).add_argument("sink", help="The sink's name or id.")

    def handle(self, *args, **options):
        getattr(self, f"handle_{options['action']}")(options)

    def _sink(self, ref: str) -> Sink:
        found = Sink.objects.filter(Q(name=ref) | Q(pk=int(ref)) if ref.isdigit() else Q(name=ref)).first()
        if found is None:
            raise CommandError(f"No sink is called {ref!r}; `manage.py sinks list` shows them.")
        return found

    def handle_add(self, options):
        try:
            sink_options = json.loads(options["options"])
        except json.JSONDecodeError as exc:
            raise CommandError(
                f'--options is not JSON ({exc}); write e.g. \'{{"stream": "AUDIT"}}\'.'
            ) from None
        if not isinstance(sink_options, dict):
            raise CommandError('--options must be a JSON object, e.g. \'{"stream": "AUDIT"}\'.')
        problems = filters.check(options["model"], options["label"])
        if problems:
            raise CommandError(" ".join(problems))
        if Sink.objects.filter(name=options["name"]).exists():
            raise CommandError(f"A sink is already called {options['name']!r}; choose another name.")
        sink = Sink.objects.create(
            name=options["name"],
            kind=options["kind"],
            target=options["target"],
            options=sink_options,
            filter_models=options["model"],
            filter_labels=options["label"],
            ordered=options["ordered"],
        )
        ordered = ", ordered per object" if sink.ordered else ""
        self.stdout.write(f"Added sink {sink.pk} {sink.name} ({sink.kind} {sink.target}{ordered}).")

    def handle_list(self, options):
        counts = {
            (row["sink_id"], row["status"]): row["n"]
            for row in SinkMessage.objects.values("sink_id", "status").annotate(n=Count("id"))
        }
        for sink in Sink.objects.order_by("pk"):
            by_status = ", ".join(
                f"{status} {counts[sink.pk, status]}"
                for status in ("pending", "sending", "delivered", "dead")
                if (sink.pk, status) in counts
            )
            state = ("active" if sink.is_active else "disabled") + (", ordered" if sink.ordered else "")
            self.stdout.write(
                f"{sink.pk}\t{sink.name}\t{sink.kind}\t{sink.target}\t{state}\t{by_status or '-'}"
            )

    def handle_disable(self, options):
        sink = self._sink(options["sink"])
        Sink.objects.filter(pk=sink.pk).update(is_active=False)
        self.stdout.write(f"Disabled sink {sink.name}: its messages wait until it is enabled.")

    def handle_enable(self, options):
        sink = self._sink(options["sink"])
        Sink.objects.filter(pk=sink.pk).update(is_active=True)
        self.stdout.write(f"Enabled sink {sink.name}.")

    def handle_replay(self, options):
        sink = self._sink(options["sink"])
        self.stdout.write(f"Replaying {delivery.replay(sink.pk)} dead message(s) of sink {sink.name}.")
