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
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/15")
CELERY_BROKER_URL = REDIS_URL
