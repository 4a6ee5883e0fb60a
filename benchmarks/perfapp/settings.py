"""Django settings of ``benchmarks.retention``, ``benchmarks.webhooks`` and the processes they start.

Everything variable comes from the environment, so the Celery worker, the
listener and the writer read exactly what the benchmark set:

* ``DATABASE_URL``: the benchmark's own database, dropped and recreated by every run
  (``audit_stream_bench_retention`` or ``audit_stream_bench_webhooks``);
* ``REDIS_URL`` (default ``redis://127.0.0.1:6379/13``): the broker, flushed by the webhook benchmark;
* ``AUDIT_STREAM_SETTINGS``: JSON for ``AUDIT_STREAM``;
* ``BENCH_APPLICATION_NAME``: the ``application_name`` of the process's connections.
"""

import json
import os

import dj_database_url

DATABASE_URL = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/audit_stream_bench_perf")
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/13")

SECRET_KEY = "benchmarks-only"
DEBUG = False  # DEBUG would record every query in connection.queries
USE_TZ = True
TIME_ZONE = "UTC"

DATABASES = {"default": dj_database_url.parse(DATABASE_URL)}
DATABASES["default"]["OPTIONS"] = {"application_name": os.environ.get("BENCH_APPLICATION_NAME", "bench")}

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "pgtrigger",
    "audit_stream",
    "benchmarks.perfapp",
]

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
AUDIT_STREAM = json.loads(os.environ.get("AUDIT_STREAM_SETTINGS", "{}"))
CELERY_BROKER_URL = REDIS_URL
