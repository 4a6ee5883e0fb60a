"""``initlogging`` on the demo shop's own database, through its ``manage.py``, as a user would run it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from django.db import connection

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def demo_db(django_db_blocker):
    """A freshly migrated demo database, with ``demo_setup`` run (it calls initlogging)."""
    with django_db_blocker.unblock():
        db = connection.settings_dict
    name = f"{db['NAME']}_demo_logging"
    server = f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}"
    with psycopg.connect(f"{server}/postgres", autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"')
    url = f"{server}/{name}"
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "demo.settings", "DATABASE_URL": url}
    manage("migrate", "--no-input", env=env)
    setup = manage("demo_setup", env=env)
    yield url, env, setup
    with psycopg.connect(f"{server}/postgres", autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def manage(*args, env) -> str:
    result = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def query(url, sql, params=None):
    with psycopg.connect(url) as conn:
        return conn.execute(sql, params).fetchall()


def logged_tables(url):
    return {
        name
        for (name,) in query(
            url,
            "SELECT DISTINCT c.relname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid"
            " WHERE t.tgname = 'audit_stream_log_insert'",
        )
    }


def test_demo_setup_logs_the_untracked_tables_only(demo_db):
    url, _, setup = demo_db
    assert "initlogging:" in setup
    tables = logged_tables(url)
    assert {"shop_supplier", "auth_user", "django_admin_log"} <= tables
    never = {"shop_product", "shop_order", "shop_productevent", "django_session", "django_migrations"}
    assert not never & tables
    assert not any(t.startswith("audit_stream_") for t in tables)


def test_rerunning_initlogging_on_the_demo_changes_nothing(demo_db):
    url, env, _ = demo_db
    before = logged_tables(url)
    output = manage("initlogging", env=env)
    assert "public.shop_supplier" in output and "already logged" in output
    assert logged_tables(url) == before


def test_the_seeded_suppliers_are_in_the_row_log(demo_db):
    url, _, _ = demo_db
    rows = query(
        url,
        "SELECT pgh_label, count(*) FROM audit_stream_row_log WHERE logged_table = 'public.shop_supplier'"
        " GROUP BY pgh_label",
    )
    assert dict(rows)["insert"] == 3


def test_demo_traffic_raw_sql_on_suppliers_is_captured_with_its_context(demo_db):
    url, env, _ = demo_db
    manage("demo_traffic", "--rate", "200", "--duration", "3", "--seed", "7", env=env)
    updates = query(
        url,
        "SELECT r.new_data, c.metadata FROM audit_stream_row_log r"
        " JOIN audit_stream_context c ON c.id = r.pgh_context_id"
        " WHERE r.logged_table = 'public.shop_supplier' AND r.pgh_label = 'update'",
    )
    assert updates, "demo_traffic re-rated no supplier"
    new_data, metadata = updates[0]
    assert set(new_data) <= {"rating", "lead_time_days"}
    assert metadata["url"].startswith("/admin/shop/supplier/")


def test_the_demo_users_password_reaches_the_feed_masked_by_default(demo_db):
    """auth_user is logged by initlogging in the demo: auth_user.password is masked without any setting."""
    url, env, _ = demo_db
    manage(
        "shell",
        "-c",
        "from django.contrib.auth.models import User; from audit_stream.stream import fold;"
        " user = User.objects.create_user('i20mask', password='first secret');"
        " user.set_password('second secret'); user.save(update_fields=['password']);"
        " fold.fold('audit_stream_row_log')",
        env=env,
    )
    (insert, update) = query(
        url,
        "SELECT c.diff, c.snapshot FROM audit_stream_change AS c"
        " WHERE c.model = 'auth.user' AND c.snapshot ->> 'username' = 'i20mask' ORDER BY c.event_id",
    )
    assert insert[1]["password"] == "***" and insert[0]["password"] == [None, "***"]
    assert update[0] == {"password": ["***", "***"]}
    assert "pbkdf2" not in json.dumps([insert, update])
