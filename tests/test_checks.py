"""Bad declarations and bad settings stop start-up with a message naming the model and the fix.

Each case runs ``manage.py check`` in a fresh process, as a user would meet it.
"""

import os
import subprocess
import sys

import pytest


def _check(case):
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.broken_settings", "AUDIT_STREAM_BROKEN": case}
    return subprocess.run(
        [sys.executable, "-m", "django", "check"], env=env, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        (
            "unknown_field",
            ["audit_stream.E001", "broken.Widget has no field 'colour'", "Choose among: id, name"],
        ),
        ("unknown_exclude", ["audit_stream.E001", "broken.Widget has no field 'weight'"]),
        ("fields_and_exclude", ["audit_stream.E002", "got both fields and exclude"]),
        (
            "unknown_mask",
            ["audit_stream.E009", "broken.Widget has no field 'secret' (in mask=", "Choose among: id, name"],
        ),
        (
            "unknown_m2m_field",
            ["audit_stream.E001", "broken.Widget has no many-to-many field 'name'", "Remove m2m_fields"],
        ),
        ("duplicate_label", ["audit_stream.E004", "declares the event label 'changed' twice"]),
        (
            "uninstallable_condition",
            [
                "audit_stream.E005",
                "broken.Widget",
                "the condition refers to OLD, which an INSERT does not have",
            ],
        ),
        ("not_postgresql", ["audit_stream.E003", 'database "lite"', "sqlite, not PostgreSQL"]),
        (
            "bad_settings",
            [
                "audit_stream.E010",
                "AUDIT_STREAM['APPEND_ONLY'] must be a bool",
                "unknown key 'NOTIFY_CHANEL'",
            ],
        ),
        (
            "no_pgtrigger",
            ["audit_stream.E007", '"pgtrigger" is not in INSTALLED_APPS', "no history is recorded"],
        ),
        (
            "cascading_obj_fk",
            [
                "audit_stream.E006",
                "broken.WidgetEvent.pgh_obj has on_delete=SET_NULL",
                "history is append-only",
                "Leave obj_fk out",
            ],
        ),
        (
            "cascading_copied_fk",
            [
                "audit_stream.E006",
                "broken.PartEvent.widget has on_delete=CASCADE: deleting a broken.Widget would delete",
                "Declare widget with on_delete=models.DO_NOTHING, db_constraint=False",
            ],
        ),
        (
            "bad_ignore_tables",
            [
                "audit_stream.E010",
                'AUDIT_STREAM["IGNORE_TABLES"] must be a list of table names',
                "PG_MEMENTO_IGNORE_TABLES must be a list of table names",
            ],
        ),
    ],
)
def test_bad_declaration_fails_the_system_checks(case, expected):
    result = _check(case)
    assert result.returncode != 0, result.stdout
    for text in expected:
        assert text in result.stderr


@pytest.mark.parametrize("case", ["valid", "cascading_obj_fk_not_append_only"])
def test_a_valid_declaration_passes_the_system_checks(case):
    """The default obj_fk passes; a cascading one is fine once history is not append-only."""
    result = _check(case)
    assert result.returncode == 0, result.stderr
