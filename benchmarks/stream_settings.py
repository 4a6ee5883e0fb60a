"""Django settings for ``python -m benchmarks.stream`` and the processes it starts.

The benchmark runs a real Celery worker and listener as child processes; they
read the same module, with the database, the Redis database and the
``AUDIT_STREAM`` settings passed in the environment:

* ``DATABASE_URL`` (default ``postgres://postgres@127.0.0.1:5432/audit_stream_bench_stream``),
  dropped and recreated by every run: never point it at a database you care about;
* ``REDIS_URL`` (default ``redis://127.0.0.1:6379/14``), flushed by every run;
* ``AUDIT_STREAM_SETTINGS``: JSON for ``AUDIT_STREAM`` (e.g. ``{"NOTIFY": false}``);
* ``BENCH_APPLICATION_NAME``: the ``application_name`` of the process's connections.
"""

import json
import os

import dj_database_url

DATABASE_URL = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/audit_stream_bench_stream")
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/14")

SECRET_KEY = "benchmarks-only"
DEBUG = False  # DEBUG would record every query in connection.queries
USE_TZ = True
TIME_ZONE = "UTC"

DATABASES = {"default": dj_database_url.parse(DATABASE_URL)}
# Names each process's PostgreSQL backend, so the benchmark can find the stream's
# (``BENCH_APPLICATION_NAME``; the listener names its own connection).
DATABASES["default"]["OPTIONS"] = {"application_name": os.environ.get("BENCH_APPLICATION_NAME", "bench")}

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "pgtrigger",
    "audit_stream",
    "benchmarks.streamapp",
]

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
AUDIT_STREAM = json.loads(os.environ.get("AUDIT_STREAM_SETTINGS", "{}"))
CELERY_BROKER_URL = REDIS_URL
