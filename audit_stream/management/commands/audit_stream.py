"""``manage.py audit_stream listen``: the stream's processes, run with your project's settings.

The listener turns NOTIFY wake-ups (and a poll every ``POLL_INTERVAL``) into
fold and delivery tasks, sent through your project's Celery app: the one your
project package loads (``from .celery import app as celery_app`` in
``mysite/__init__.py``), or the one ``--app`` names, as ``celery -A`` does.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError

_NO_APP = (
    "No Celery app is loaded, so the listener would have nowhere to send its tasks. Create one in"
    " <project>/celery.py and import it in <project>/__init__.py (see the README's Installation),"
    " or name it with --app <module>[:<attribute>], as for celery -A."
)


class Command(BaseCommand):
    help = "audit_stream's stream processes. listen: wake the fold when events are committed."

    def add_arguments(self, parser) -> None:
        actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
        listen = actions.add_parser(
            "listen",
            help="Run the listener: LISTEN/NOTIFY (and a poll) -> fold and delivery tasks.",
            description=(
                "Run the listener until SIGTERM or SIGINT. Run it next to `celery -A <project> worker`"
                " (which folds) and `celery -A <project> beat`; run two for failover (one is active,"
                " the other stands by). It needs a direct database connection (LISTEN_DATABASE),"
                " not a transaction-mode pooler."
            ),
        )
        listen.add_argument(
            "--app",
            "-A",
            help="Your Celery app, as for celery -A (default: the app your project package loads).",
        )

    def handle(self, *args: Any, action: str, **options: Any) -> None:
        if action == "listen":
            self._listen(options)

    def _listen(self, options: dict[str, Any]) -> None:
        from audit_stream.stream.listen import run

        app = _celery_app(options.get("app"))
        _log_to_stderr(options["verbosity"])
        self.stderr.write(f"audit_stream listener: sending tasks with the Celery app {app.main!r}")
        run(app.send_task)


def _celery_app(spec: str | None) -> Any:
    """The project's Celery app: ``spec`` (``module[:attribute]``), else the current one."""
    from celery import _state

    if spec:
        from celery.app.utils import find_app

        try:
            return find_app(spec)
        except Exception as exc:  # ImportError, AttributeError, celery's own errors
            raise CommandError(f"Cannot load the Celery app {spec!r}: {exc}") from exc
    app = _state.get_current_app()
    if app is _state.default_app and app.main == "default":  # celery's fallback: nothing configured
        raise CommandError(_NO_APP)
    return app


def _log_to_stderr(verbosity: int) -> None:
    """Show the listener's log lines, unless the project's LOGGING already routes them."""
    logger = logging.getLogger("audit_stream")
    if logger.handlers or logging.getLogger().handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel({0: logging.WARNING, 1: logging.INFO}.get(verbosity, logging.DEBUG))
