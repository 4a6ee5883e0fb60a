"""Django settings for the benchmarks: one dedicated PostgreSQL database.

``BENCH_DATABASE_URL`` names it; the benchmark drops and recreates it on
every run, so never point it at a database you care about.
"""

import os

import dj_database_url

DATABASE_URL = os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/audit_stream_bench")

SECRET_KEY = "benchmarks-only"
DEBUG = False  # DEBUG would record every query in connection.queries
USE_TZ = True
TIME_ZONE = "UTC"

DATABASES = {"default": dj_database_url.parse(DATABASE_URL)}

INSTALLED_APPS = [
    # pghistory's MiddlewareEvents view refers to auth.User.
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "pgtrigger",
    "pghistory",
    "audit_stream",
    "benchmarks.benchapp",
]

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
# The "audit_stream partitioned" variant's event table: range partitions of pgh_id.
AUDIT_STREAM = {"PARTITIONS": {"benchapp.AsPartItemEvent": {"size": 100_000, "ahead": 2}}}
