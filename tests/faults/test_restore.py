"""A dump restored onto another cluster: the stream recovers without losing or doubling an event.

The original database runs on the fault suite's private cluster, which has
issued a few thousand more transactions than a fresh one. It is dumped with
pg_dump and restored with pg_restore into a second cluster initialised for
the test (another system identifier, transaction ids starting low again):
the restored checkpoint's snapshot is ahead of everything the new cluster
issues, and the restored events carry the old cluster's transaction ids.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.faults.conftest import Cluster, _pg_bin
from tests.procs import ROOT

pytestmark = pytest.mark.faults

TABLES = ("testapp_productevent", "testapp_pricechange", "testapp_orderevent")
KEEP_ONE = {"RETENTION": {"default": {"keep_last": 1}}}

# Run in a child process against one database: fold everything, or apply retention.
_FOLD = "from audit_stream.stream import fold; fold.fold_all()"
_PRUNE = (
    "import json; from audit_stream import retention; r = retention.prune(targets=%r);"
    " print(json.dumps({'rows': r.rows, 'errors': r.errors}))"
)


def _django(stack, cluster: Cluster, db: str, code: str, settings: dict | None = None) -> str:
    env = {
        **stack.env(),
        "DATABASE_URL": cluster.url(db),
        "AUDIT_STREAM_SETTINGS": json.dumps(settings or {}),
    }
    done = subprocess.run(
        [sys.executable, "-c", f"import django; django.setup(); {code}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def _sql(cluster: Cluster, db: str, statement: str, params=None):
    with cluster.connect(db, autocommit=True) as conn:
        cursor = conn.execute(statement, params)
        return cursor.fetchall() if cursor.description else None


def _burn_transactions(cluster: Cluster, db: str, n: int) -> None:
    burn = f"DO $$ BEGIN FOR i IN 1..{n} LOOP PERFORM pg_current_xact_id(); COMMIT; END LOOP; END $$"
    _sql(cluster, db, burn)


def _products(cluster: Cluster, db: str, prefix: str, n: int) -> None:
    for i in range(n):  # one transaction each, then one update each: two events per product
        _sql(cluster, db, "INSERT INTO testapp_product (name, price, stock, updated_at)"
             " VALUES (%s, 1, 0, now())", [f"{prefix}{i}"])  # fmt: skip
        _sql(cluster, db, "UPDATE testapp_product SET price = 2 WHERE name = %s", [f"{prefix}{i}"])


def _folded_once(cluster: Cluster, db: str) -> None:
    for table in TABLES:
        events = _sql(cluster, db, f"SELECT pgh_id FROM {table} ORDER BY 1")
        changes = _sql(
            cluster, db, "SELECT event_id FROM audit_stream_change WHERE event_table = %s ORDER BY 1", [table]
        )
        assert changes == events, (table, len(events), len(changes))


@pytest.fixture
def second_cluster():
    root = Path(tempfile.mkdtemp(prefix="audit-stream-restore-pg-"))
    root.chmod(0o755)
    cluster = Cluster(root)
    yield cluster
    cluster.stop()
    shutil.rmtree(root, ignore_errors=True)


def test_a_dump_restored_onto_another_cluster_loses_and_doubles_nothing(stack, second_cluster, tmp_path):
    old, new, db = stack.cluster, second_cluster, stack.db
    stack.webhook()  # an endpoint: messages are recorded with the changes (nothing delivers here)
    _burn_transactions(old, db, 20_000)  # the old cluster is well ahead of a fresh one
    _products(old, db, "folded", 3)
    _django(stack, old, db, _FOLD)
    _products(old, db, "unfolded", 2)  # committed, not folded when the dump is taken
    # A table never folded on the old cluster (no checkpoint in the dump), with events.
    customer_sql = "INSERT INTO testapp_customer (email, name) VALUES ('a@x.org', 'A') RETURNING id"
    (customer,) = _sql(old, db, customer_sql)
    _sql(old, db, "INSERT INTO testapp_order (customer_id, status, note) VALUES (%s, 'new', '')", customer)
    _sql(old, db, "DELETE FROM audit_stream_checkpoint WHERE event_table = 'testapp_orderevent'")

    dump = tmp_path / "audit.dump"
    subprocess.run([_pg_bin() / "pg_dump", "-Fc", "-f", dump, old.url(db)], check=True, capture_output=True)
    _sql(new, "postgres", f'CREATE DATABASE "{db}"')
    subprocess.run([_pg_bin() / "pg_restore", "-d", new.url(db), dump], check=True, capture_output=True)
    identity = "SELECT system_identifier FROM pg_control_system()"
    assert _sql(old, "postgres", identity) != _sql(new, "postgres", identity)
    # The premise: the old cluster's transaction ids are ahead of everything the new one has issued.
    (old_high,) = _sql(new, db, "SELECT max(pgh_xid) FROM testapp_orderevent")[0]
    (new_next,) = _sql(new, db, "SELECT pg_current_xact_id()::text::bigint")[0]
    assert old_high > new_next

    # Written on the new cluster before the worker runs: transaction ids below the restored snapshot.
    _products(new, db, "after", 2)
    before = _sql(new, db, "SELECT count(*) FROM testapp_productevent")[0][0]
    report = json.loads(_django(stack, new, db, _PRUNE % (["testapp.ProductEvent"],), KEEP_ONE))
    assert _sql(new, db, "SELECT count(*) FROM testapp_productevent")[0][0] == before
    assert "restored from another cluster" in report["errors"][0]

    # A writer still in progress while the fold recovers: folded by the next fold, once.
    with new.connect(db) as writer:
        writer.execute(
            "INSERT INTO testapp_product (name, price, stock, updated_at) VALUES ('open', 1, 0, now())"
        )
        _django(stack, new, db, _FOLD)
        writer.commit()
    _django(stack, new, db, _FOLD)
    _folded_once(new, db)

    backlog = "from audit_stream.dashboard import queries as q;"
    backlog += " print(sum(t.backlog for t in q.stream_tables()))"
    assert _django(stack, new, db, backlog).strip() == "0"  # the dashboard shows nothing unfolded

    # The new cluster's ids then pass the restored events' old ones: those are not folded again.
    _burn_transactions(new, db, old_high - new_next + 100)
    _products(new, db, "later", 2)
    _django(stack, new, db, _FOLD)
    _folded_once(new, db)
    messages = _sql(new, db, "SELECT count(*), count(DISTINCT change_id) FROM audit_stream_webhookmessage")[0]
    owed = _sql(new, db, "SELECT count(*) FROM audit_stream_change WHERE model = 'testapp.product'"
                " AND label = 'snapshot'")[0][0]  # fmt: skip
    assert messages == (owed, owed)

    # Retention works again, and prunes folded events only.
    report = json.loads(_django(stack, new, db, _PRUNE % (["testapp.ProductEvent"],), KEEP_ONE))
    assert report["errors"] == [] and report["rows"]["testapp_productevent"] > 0
    _django(stack, new, db, _FOLD)
    unfolded = "SELECT count(*) FROM testapp_productevent AS e WHERE NOT EXISTS"
    unfolded += " (SELECT 1 FROM audit_stream_change AS c"
    unfolded += "  WHERE c.event_table = 'testapp_productevent' AND c.event_id = e.pgh_id)"
    assert _sql(new, db, unfolded) == [(0,)]
