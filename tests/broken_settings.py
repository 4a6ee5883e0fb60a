"""tests.settings plus the app of deliberately bad declarations (tests/broken)."""

import os

from tests.settings import *  # noqa: F403

INSTALLED_APPS = [*INSTALLED_APPS, "tests.broken"]  # noqa: F405

if os.environ.get("AUDIT_STREAM_BROKEN") == "not_postgresql":
    DATABASES = {**DATABASES, "lite": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}  # noqa: F405
if os.environ.get("AUDIT_STREAM_BROKEN") == "bad_settings":
    AUDIT_STREAM = {"APPEND_ONLY": "yes", "NOTIFY_CHANEL": "x"}
if os.environ.get("AUDIT_STREAM_BROKEN") == "bad_ignore_tables":
    AUDIT_STREAM = {"IGNORE_TABLES": ["django_session", 7]}
    PG_MEMENTO_IGNORE_TABLES = "django_admin_log"
if os.environ.get("AUDIT_STREAM_BROKEN") == "no_pgtrigger":
    INSTALLED_APPS = [app for app in INSTALLED_APPS if app != "pgtrigger"]
if os.environ.get("AUDIT_STREAM_BROKEN") == "cascading_obj_fk_not_append_only":
    AUDIT_STREAM = {"APPEND_ONLY": False}
