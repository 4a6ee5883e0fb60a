"""Settings for the test suite: real PostgreSQL (DATABASE_URL) and Redis (REDIS_URL)."""

import json
import os

import dj_database_url

SECRET_KEY = "tests-only"
DEBUG = False
USE_TZ = True
TIME_ZONE = "UTC"

_default = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/audit_stream")
DATABASES = {
    "default": dj_database_url.parse(_default),
    # A second database, for context and capture on every alias.
    "other": dj_database_url.parse(os.environ.get("OTHER_DATABASE_URL", _default + "_other")),
}

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.admin",
    "django.contrib.postgres",
    "pgtrigger",
    "audit_stream",
    "tests.testapp",
]

MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "audit_stream.middleware.HistoryMiddleware",
]

ROOT_URLCONF = "tests.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
STATIC_URL = "static/"
# Subprocesses started by the tests (worker, listener) get their settings here.
AUDIT_STREAM = json.loads(os.environ.get("AUDIT_STREAM_SETTINGS", "{}"))
# AUDIT_STREAM_TEST_PARTITIONED=1: the whole suite on the partitioned layout. migrate
# converts every event table, the row log and the change feed into range partitions
# (README, "Partitioned history"); tests/conftest.py keeps partitions ahead of the ids.
PARTITIONED = os.environ.get("AUDIT_STREAM_TEST_PARTITIONED", "") not in ("", "0")
if PARTITIONED:
    _layout = {"size": 20_000, "ahead": 2}
    AUDIT_STREAM.setdefault(
        "PARTITIONS",
        {
            "default": _layout,
            "audit_stream.RowLog": _layout,
            "audit_stream.Change": _layout,
            "testapp.TicketEvent": {"size": 10, "ahead": 2},  # tests/test_partitions.py's layout
        },
    )
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/15")
CELERY_BROKER_URL = REDIS_URL
