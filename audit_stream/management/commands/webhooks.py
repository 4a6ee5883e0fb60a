"""``manage.py webhooks add|list|test|replay|disable|enable|rotate-secret|delete``."""

from __future__ import annotations

from datetime import datetime

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from audit_stream.management.confirm import confirm
from audit_stream.webhooks import delivery, filters
from audit_stream.webhooks.models import WebhookEndpoint, WebhookMessage


def _since(value: str) -> datetime:
    parsed = parse_datetime(value)
    if parsed is None:
        raise CommandError(
            f"--since {value!r} is not a date and time; use ISO 8601, e.g. 2026-11-23T10:00:00Z."
        )
    return parsed if timezone.is_aware(parsed) else timezone.make_aware(parsed)


class Command(BaseCommand):
    help = "Manage webhook endpoints: add, list, test, replay, disable, enable, rotate-secret, delete."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

        add = sub.add_parser("add", help="Add an endpoint; prints its secret once.")
        add.add_argument("url")
        add.add_argument("--description", default="")
        add.add_argument(
            "--model", action="append", default=[], help='Only this model ("app_label.model"); repeatable.'
        )
        add.add_argument("--label", action="append", default=[], help="Only this event label; repeatable.")
        add.add_argument(
            "--rate-limit", type=int, default=None, help="At most this many messages per second."
        )
        add.add_argument(
            "--ordered",
            action="store_true",
            help="Per object, in order: an object's next change waits until the previous one was"
            " delivered or went dead (other objects keep flowing).",
        )

        sub.add_parser("list", help="List endpoints with their health.")

        test = sub.add_parser("test", help="Queue a test message to an endpoint.")
        test.add_argument("endpoint", type=int)

        replay = sub.add_parser(
            "replay", help="Deliver a message again, or every dead message of an endpoint."
        )
        target = replay.add_mutually_exclusive_group(required=True)
        target.add_argument("--message", help="A message id (msg_… or its UUID).")
        target.add_argument("--endpoint", type=int, help="Replay the dead messages of this endpoint.")
        replay.add_argument(
            "--since", help="With --endpoint: messages created since (ISO 8601). Default: all."
        )

        disable = sub.add_parser("disable", help="Stop delivering to an endpoint.")
        disable.add_argument("endpoint", type=int)
        disable.add_argument("--reason", default="Disabled by an operator.")

        enable = sub.add_parser("enable", help="Resume delivering to an endpoint.")
        enable.add_argument("endpoint", type=int)

        rotate = sub.add_parser(
            "rotate-secret", help="New secret; the old one keeps signing for --overlap-hours."
        )
        rotate.add_argument("endpoint", type=int)
        rotate.add_argument("--overlap-hours", type=float, default=24.0)

        delete = sub.add_parser(
            "delete", help="Delete an endpoint with its messages and attempts (asks; --no-input)."
        )
        delete.add_argument("endpoint", type=int)
        delete.add_argument("--no-input", action="store_true", help="Do not ask for confirmation.")

    def handle(self, *args, **options):
        getattr(self, "handle_" + options["action"].replace("-", "_"))(options)

    def _endpoint(self, pk: int) -> WebhookEndpoint:
        try:
            return WebhookEndpoint.objects.get(pk=pk)
        except WebhookEndpoint.DoesNotExist:
            raise CommandError(f"There is no webhook endpoint {pk}; see `manage.py webhooks list`.") from None

    def handle_add(self, options):
        if options["rate_limit"] is not None and options["rate_limit"] < 1:
            raise CommandError("--rate-limit must be a positive number of messages per second.")
        problems = filters.check(options["model"], options["label"])
        if problems:
            raise CommandError(" ".join(problems))
        endpoint = WebhookEndpoint(
            url=options["url"],
            description=options["description"],
            filter_models=options["model"],
            filter_labels=options["label"],
            rate_limit=options["rate_limit"],
            ordered=options["ordered"],
        )
        try:
            endpoint.full_clean()
        except ValidationError as exc:
            raise CommandError(
                "; ".join(f"{k}: {' '.join(v)}" for k, v in exc.message_dict.items())
            ) from None
        endpoint.save()
        self.stdout.write(self.style.SUCCESS(f"Added endpoint {endpoint.pk}: {endpoint.url}"))
        self.stdout.write(f"Secret (shown once, keep it safe): {endpoint.secret}")

    def handle_list(self, options):
        endpoints = WebhookEndpoint.objects.order_by("pk")
        if not endpoints:
            self.stdout.write("No webhook endpoints. Add one with `manage.py webhooks add URL`.")
        for ep in endpoints:
            counts = {s: ep.messages.filter(status=s).count() for s in ("pending", "delivered", "dead")}
            state = "active" if ep.is_active else f"disabled ({ep.disabled_reason})"
            filters = ", ".join(ep.filter_models + ep.filter_labels) or "all changes"
            state += ", ordered per object" if ep.ordered else ""
            self.stdout.write(
                f"{ep.pk:>4}  {ep.url}  [{state}]  secret {ep.masked_secret}  filters: {filters}  "
                f"pending {counts['pending']}, delivered {counts['delivered']}, dead {counts['dead']}, "
                f"failures in a row {ep.consecutive_failures}"
            )

    def handle_test(self, options):
        message = delivery.send_test(self._endpoint(options["endpoint"]))
        self.stdout.write(self.style.SUCCESS(f"Queued test message {message.webhook_id}."))

    def handle_replay(self, options):
        if options["message"]:
            raw = options["message"].removeprefix("msg_")
            try:
                message = WebhookMessage.objects.get(pk=raw)
            except (WebhookMessage.DoesNotExist, ValidationError, ValueError):
                raise CommandError(f"There is no webhook message {options['message']}.") from None
            delivery.replay([message])
            self.stdout.write(self.style.SUCCESS(f"Replaying {message.webhook_id}."))
            return
        endpoint = self._endpoint(options["endpoint"])
        since = _since(options["since"]) if options["since"] else None
        count = delivery.replay_failed(endpoint, since)
        self.stdout.write(self.style.SUCCESS(f"Replaying {count} dead message(s) of endpoint {endpoint.pk}."))

    def handle_disable(self, options):
        endpoint = self._endpoint(options["endpoint"])
        endpoint.disable(options["reason"])
        self.stdout.write(self.style.SUCCESS(f"Disabled endpoint {endpoint.pk}."))

    def handle_enable(self, options):
        endpoint = self._endpoint(options["endpoint"])
        endpoint.enable()
        self.stdout.write(self.style.SUCCESS(f"Enabled endpoint {endpoint.pk}."))

    def handle_rotate_secret(self, options):
        from datetime import timedelta

        endpoint = self._endpoint(options["endpoint"])
        secret = endpoint.rotate_secret(overlap=timedelta(hours=options["overlap_hours"]))
        self.stdout.write(self.style.SUCCESS(f"Rotated the secret of endpoint {endpoint.pk}."))
        self.stdout.write(f"New secret (shown once): {secret}")

    def handle_delete(self, options):
        endpoint = self._endpoint(options["endpoint"])
        owed = endpoint.messages.filter(status__in=[WebhookMessage.PENDING, WebhookMessage.SENDING]).count()
        confirm(
            f"This deletes endpoint {endpoint.pk} ({endpoint.url}) with every message and attempt"
            f" recorded for it, {owed} of them still owed. It cannot be undone.",
            no_input=options["no_input"],
            cancelled="Deletion cancelled.",
        )
        deleted = delivery.delete_endpoint(endpoint)
        self.stdout.write(
            self.style.SUCCESS(
                f"Deleted endpoint {endpoint.pk} ({endpoint.url}) and its {deleted} message(s)."
            )
        )
