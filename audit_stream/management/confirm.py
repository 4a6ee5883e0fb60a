"""Asking an operator to confirm a destructive command, or refusing to guess."""

from __future__ import annotations

import sys

from django.core.management.base import CommandError

__all__ = ["confirm"]


def confirm(question: str, *, no_input: bool, cancelled: str, does: str = "deletes data") -> None:
    """Ask ``question`` on the terminal and go on only if the answer is ``yes``.

    ``does`` says what the command does to data, in the refusal without a
    terminal. With ``no_input`` the caller has confirmed already. Without a terminal to
    ask on (a cron job, a pipe, CI) nothing is deleted: a :class:`CommandError`
    says to pass ``--no-input``, instead of dying on end-of-file.
    """
    if no_input:
        return
    stdin = sys.stdin
    if stdin is None or stdin.closed or not stdin.isatty():
        raise CommandError(
            f"This command {does} and asks for confirmation, but there is no terminal to ask on."
            " Nothing was changed. Run it from a terminal, or pass --no-input to confirm in advance"
            " (try --dry-run first)."
        )
    try:
        answer = input(f"{question} Type 'yes' to continue: ")
    except EOFError:
        raise CommandError(f"{cancelled} (no answer).") from None
    if answer.strip().lower() != "yes":
        raise CommandError(cancelled)
