"""``makemigrations``: a renamed table gets its triggers after the rename, not before.

django-pgtrigger writes a model's trigger operations with the constraints,
and Django renames a table (``AlterModelTable``) after every constraint: a
migration that changes an event model's ``db_table`` would create the
event table's triggers (``ON "<new name>"``) before the table has that name,
and ``migrate`` would stop with ``relation "<new name>" does not exist``.
This moves the triggers added to a renamed model right after its rename
(the triggers removed still go first, while the table has its old name).
"""

from __future__ import annotations

from django.core.management.commands import makemigrations, migrate
from django.db.migrations.operations import AlterModelTable

__all__ = ["install"]


class _RenamedTableTriggersLast:
    """An autodetector mixin: ``AddTrigger`` of a renamed model after its ``AlterModelTable``."""

    def generate_altered_db_table(self):
        super().generate_altered_db_table()
        from pgtrigger.migrations import AddTrigger

        for app_label, operations in self.generated_operations.items():
            renamed = {op.name_lower for op in operations if isinstance(op, AlterModelTable)}
            moved = [op for op in operations if isinstance(op, AddTrigger) and op.model_name_lower in renamed]
            if moved:
                kept = [op for op in operations if op not in moved]
                self.generated_operations[app_label] = kept + moved


def install() -> None:
    """Put the mixin on the autodetector of ``makemigrations`` and ``migrate`` (once, one class for both)."""
    detector = makemigrations.MigrationAutodetector
    if not issubclass(detector, _RenamedTableTriggersLast):
        detector = type("MigrationAutodetector", (_RenamedTableTriggersLast, detector), {})
    makemigrations.MigrationAutodetector = migrate.MigrationAutodetector = detector
    for command in (makemigrations.Command, migrate.Command):
        if hasattr(command, "autodetector"):  # Django 5.2+ (its check wants one class for both)
            command.autodetector = detector
