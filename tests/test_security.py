"""Tamper-proof capture: the application's own role can neither skip, divert, delete nor forge history.

Every test runs as a real non-superuser LOGIN role that the suite creates (named
after the test database) and connects with, in two deployments:

* "two roles": a non-superuser owner role owns every table and function (it
  ran the migrations); the runtime role has the grants of
  ``manage.py audit_stream_grants``;
* "one role + grants": the project was migrated by the role it used to
  connect with (here the superuser); a runtime role was added later with
  the same documented grants.
"""

from __future__ import annotations

import contextlib
import io
from collections import Counter
from dataclasses import dataclass
from decimal import Decimal

import psycopg
import pytest
import redis
from django.core.management import CommandError, call_command
from django.db import connection, transaction
from django.db.models import Sum

import audit_stream
from audit_stream import checks, grants, partitions, retention, rowlog
from audit_stream.models import (
    Context,
    ContextCount,
    PartitionCount,
    RowLog,
    Sink,
    SinkMessage,
    WebhookEndpoint,
    WebhookMessage,
)
from audit_stream.sinks import delivery as sink_delivery
from audit_stream.stream import fold
from audit_stream.webhooks import delivery
from tests.sink_servers import REDIS_URL, unique
from tests.testapp.models import (
    Customer,
    Order,
    OrderEvent,
    Product,
    ProductEvent,
    Supplier,
    Ticket,
    TicketEvent,
)

pytestmark = pytest.mark.django_db(transaction=True)

_INSERT_PRODUCT = "INSERT INTO testapp_product (name, price, stock, updated_at) VALUES (%s, 1, 0, now())"

# Every object of the schema owned by the current role, handed to another role
# (sequences that belong to a table follow it). Partitions (the partitioned
# layout, AUDIT_STREAM_TEST_PARTITIONED=1) are handed over too, as the owner
# that ran migrate would own them; a partitioned table's dependencies on its
# own columns are not another table's.
_TRANSFER_OWNERSHIP = """
DO $$
DECLARE
    _object record;
BEGIN
    FOR _object IN
        SELECT c.oid::regclass AS rel FROM pg_class AS c
        WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p', 'S', 'v')
          AND c.relowner = current_user::regrole
          AND (c.relispartition OR NOT EXISTS (
                  SELECT FROM pg_depend AS d
                  WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.refobjid <> c.oid
                    AND d.deptype IN ('a', 'i') AND d.refclassid = 'pg_class'::regclass))
    LOOP
        EXECUTE format('ALTER TABLE %s OWNER TO %I', _object.rel, '{owner}');
    END LOOP;
    FOR _object IN
        SELECT p.oid::regprocedure AS fn, p.prokind FROM pg_proc AS p
        WHERE p.pronamespace = 'public'::regnamespace AND p.proowner = current_user::regrole
    LOOP
        EXECUTE format('ALTER %s %s OWNER TO %I',
                       CASE WHEN _object.prokind = 'a' THEN 'AGGREGATE' ELSE 'FUNCTION' END,
                       _object.fn, '{owner}');
    END LOOP;
END;
$$;
"""


@dataclass(frozen=True)
class Deployment:
    """The roles of one deployment: ``owner`` ran the migrations, ``runtime`` is the application's."""

    name: str
    owner: str
    runtime: str


def _admin(statement: str) -> None:
    with connection.cursor() as cursor:
        cursor.execute(statement)


def _drop_role(role: str) -> None:
    _admin(
        f"DO $$ BEGIN IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') THEN"
        f' REASSIGN OWNED BY "{role}" TO CURRENT_USER; DROP OWNED BY "{role}"; DROP ROLE "{role}";'
        " END IF; END $$;"
    )


@pytest.fixture(scope="module", params=["two roles", "one role + grants"])
def deployment(request, django_db_setup, django_db_blocker):
    """The roles of a deployment, created for this module and dropped after it."""
    with django_db_blocker.unblock():
        database = connection.settings_dict["NAME"]
        runtime, owner = f"{database}_runtime", f"{database}_owner"
        for role in (runtime, owner):
            _drop_role(role)
        _admin(f'CREATE ROLE "{runtime}" LOGIN')
        if request.param == "two roles":
            _admin(f'CREATE ROLE "{owner}" LOGIN')
            _admin(_TRANSFER_OWNERSHIP.replace("{owner}", owner))
        else:
            owner = connection.settings_dict["USER"]
        call_command("audit_stream_grants", runtime, "--apply", stdout=io.StringIO())
        try:
            yield Deployment(request.param, owner, runtime)
        finally:
            connection.close()  # the test connection may be connected as another role
            for role in (runtime, f"{database}_owner"):
                _drop_role(role)


def _connect(role: str) -> psycopg.Connection:
    """A psycopg connection to the test database as ``role`` (autocommit, like psql)."""
    settings = connection.settings_dict
    return psycopg.connect(
        host=settings["HOST"] or "127.0.0.1",
        port=settings["PORT"] or 5432,
        dbname=settings["NAME"],
        user=role,
        autocommit=True,
    )


@contextlib.contextmanager
def _django_as(role: str):
    """Django's default connection, reconnected as ``role`` for the block."""
    user = connection.settings_dict["USER"]
    connection.close()
    connection.settings_dict["USER"] = role
    try:
        yield
    finally:
        connection.close()
        connection.settings_dict["USER"] = user


def _trigger_names(table: str) -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT tgname FROM pg_trigger WHERE tgrelid = %s::regclass AND NOT tgisinternal", [table]
        )
        return [row[0] for row in cursor.fetchall()]


@pytest.fixture
def product_event():
    """One product and its snapshot event, written by the owner."""
    Product.objects.create(name="kept", price=1)
    return ProductEvent.objects.get()


# --- the attempts of the issue: each refused, or changes nothing -----------------------------------


def test_setting_the_prune_switch_does_not_let_the_runtime_role_delete_history(deployment, product_event):
    """``set_config('audit_stream.allow_prune', 'on', true)`` then DELETE: refused, the event stays."""
    with (
        _connect(deployment.runtime) as conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege),
        conn.transaction(),
    ):
        conn.execute("SELECT set_config('audit_stream.allow_prune', 'on', true)")
        conn.execute("DELETE FROM testapp_productevent")
    assert ProductEvent.objects.filter(pk=product_event.pk).exists()


def test_pgtrigger_ignore_does_not_let_the_runtime_role_skip_capture(deployment):
    """``SET pgtrigger.ignore`` naming every trigger of the table: the insert is still recorded."""
    names = "{" + ",".join(_trigger_names("testapp_product")) + "}"
    with _connect(deployment.runtime) as conn:
        conn.execute("SELECT set_config('pgtrigger.ignore', %s, false)", [names])
        conn.execute(_INSERT_PRODUCT, ["unskippable"])
    assert ProductEvent.objects.filter(name="unskippable", pgh_label="snapshot").count() == 1


def test_pgtrigger_ignore_still_works_for_the_owner_role(deployment):
    """Migrations and maintenance, as the owner, may still skip audit_stream's triggers."""
    names = "{" + ",".join(_trigger_names("testapp_product")) + "}"
    with _connect(deployment.owner) as conn:
        conn.execute("SELECT set_config('pgtrigger.ignore', %s, false)", [names])
        conn.execute(_INSERT_PRODUCT, ["maintenance"])
    assert Product.objects.filter(name="maintenance").exists()
    assert not ProductEvent.objects.filter(name="maintenance").exists()


@pytest.mark.parametrize("search_path", [None, "pg_temp, public"])
def test_a_temporary_table_named_like_the_event_table_cannot_divert_events(deployment, search_path):
    """The event lands in the real event table, the temporary one stays empty."""
    with _connect(deployment.runtime) as conn:
        conn.execute(
            "CREATE TEMP TABLE testapp_productevent (LIKE public.testapp_productevent INCLUDING ALL)"
        )
        conn.execute(
            "CREATE TEMP TABLE audit_stream_context (LIKE public.audit_stream_context INCLUDING ALL)"
        )
        if search_path:
            conn.execute(f"SET search_path = {search_path}")
        conn.execute(
            "SELECT set_config('audit_stream.context_id', '5e6e2a52-35c6-4a5e-9c3a-3f1d8b7c2a10', false),"
            " set_config('audit_stream.context_metadata', '{\"user\": \"mallory\"}', false)"
        )
        conn.execute(_INSERT_PRODUCT.replace("testapp_product", "public.testapp_product"), ["diverted"])
        assert conn.execute("SELECT count(*) FROM pg_temp.testapp_productevent").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM pg_temp.audit_stream_context").fetchone() == (0,)
    event = ProductEvent.objects.get(name="diverted")
    assert event.pgh_context.metadata == {"user": "mallory"}


def test_a_hand_written_event_is_refused(deployment, product_event):
    """INSERT INTO an event table by hand: refused, nothing added."""
    with _connect(deployment.runtime) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute(
            "INSERT INTO testapp_productevent (pgh_label, pgh_obj_id, name, price, stock, updated_at)"
            " VALUES ('snapshot', %s, 'forged', 0, 0, now())",
            [product_event.pgh_obj_id],
        )
    assert list(ProductEvent.objects.values_list("name", flat=True)) == ["kept"]


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE testapp_productevent SET name = 'forged'",
        "DELETE FROM testapp_productevent",
        "TRUNCATE testapp_productevent",
        "UPDATE audit_stream_context SET metadata = '{}'",
        "DELETE FROM audit_stream_context",
        "INSERT INTO audit_stream_context (id, metadata) VALUES (gen_random_uuid(), '{}')",
        "DELETE FROM audit_stream_row_log",
        "UPDATE audit_stream_context_count SET events = 0",
        "UPDATE audit_stream_partition_count SET events = 0",
        "ALTER TABLE testapp_product DISABLE TRIGGER ALL",
        "DROP TRIGGER {trigger} ON testapp_product",
        "SELECT _audit_stream_attach_context(gen_random_uuid(), '{}')",
        "SELECT _audit_stream_stop_logging('testapp_supplier'::regclass)",
        "CREATE FUNCTION public.nextval(text) RETURNS bigint LANGUAGE sql AS 'SELECT 2::bigint'",
    ],
)
def test_history_and_its_machinery_refuse_the_runtime_role(deployment, product_event, statement):
    """Changing history, contexts, the row log, the triggers or audit_stream's functions: refused."""
    rowlog.init_logging(tables=[Supplier._meta.db_table])
    statement = statement.replace("{trigger}", _trigger_names("testapp_product")[0])
    try:
        with _connect(deployment.runtime) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(statement)
    finally:
        rowlog.drop_logging()
    assert list(ProductEvent.objects.values_list("name", flat=True)) == ["kept"]


def test_the_row_log_cannot_be_diverted_by_the_runtime_role(deployment):
    """initlogging's function writes into the real row log, whatever temporary table exists."""
    rowlog.init_logging(tables=[Supplier._meta.db_table])
    try:
        with _connect(deployment.runtime) as conn:
            conn.execute(
                "CREATE TEMP TABLE audit_stream_row_log (LIKE public.audit_stream_row_log INCLUDING ALL)"
            )
            conn.execute("INSERT INTO testapp_supplier (name, rating, active) VALUES ('logged', 1, true)")
            assert conn.execute("SELECT count(*) FROM pg_temp.audit_stream_row_log").fetchone() == (0,)
    finally:
        rowlog.drop_logging()
    assert (
        RowLog.objects.filter(logged_table__endswith=".testapp_supplier", new_data__name="logged").count()
        == 1
    )


# --- what the runtime role can still do ----------------------------------------------------------


def test_every_write_path_is_captured_with_its_context_as_the_runtime_role(deployment):
    """ORM, update(), bulk operations, raw SQL and COPY by the runtime role: recorded, with the context."""
    with _django_as(deployment.runtime), audit_stream.context(user="ops") as ctx:
        first = Product.objects.create(name="orm", price=1)
        first.price = 2
        first.save()
        Product.objects.filter(name="orm").update(price=3)
        bulk = Product.objects.bulk_create([Product(name=f"bulk {i}") for i in range(3)])
        for product in bulk:
            product.stock = 5
        Product.objects.bulk_update(bulk, ["stock"])
        Product.objects.filter(name="bulk 0").delete()
        with connection.cursor() as cursor:
            cursor.execute(_INSERT_PRODUCT, ["raw"])
        # COPY goes around Django's execute wrapper: inside a transaction, it runs
        # with the context the transaction's first write set.
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(_INSERT_PRODUCT, ["raw in transaction"])
            with cursor.cursor.copy(
                "COPY testapp_product (name, price, stock, updated_at) FROM STDIN"
            ) as copy:
                copy.write_row(("copied", 3, 0, "2026-01-01T00:00:00Z"))
    recorded = Counter(ProductEvent.objects.values_list("pgh_label", "name", "stock"))
    assert recorded == Counter(
        [("snapshot", "orm", 0)] * 3
        + [("snapshot", f"bulk {i}", 0) for i in range(3)]
        + [("snapshot", f"bulk {i}", 5) for i in range(3)]
        + [("before_delete", "bulk 0", 5), ("snapshot", "raw", 0), ("snapshot", "raw in transaction", 0)]
        + [("snapshot", "copied", 0)]
    )
    assert list(
        ProductEvent.objects.filter(name="orm").order_by("pgh_id").values_list("price", flat=True)
    ) == [
        Decimal("1.00"),
        Decimal("2.00"),
        Decimal("3.00"),
    ]
    assert set(ProductEvent.objects.values_list("pgh_context_id", flat=True)) == {ctx.id}
    assert Context.objects.get(pk=ctx.id).metadata == {"user": "ops"}


def test_the_runtime_roles_fold_counts_contexts_through_the_trigger(deployment):
    """The runtime role cannot write the per-context counts, yet its fold keeps them (as the owner)."""
    with _django_as(deployment.runtime):
        with audit_stream.context(user="counted"):
            Product.objects.create(name="counted", price=1)
        fold.fold("testapp_productevent")
    context = Context.objects.get(metadata__user="counted")
    assert ContextCount.objects.get(context_id=context.id).events == 1


def test_the_runtime_roles_deliveries_claim_from_and_raise_the_floors(deployment, httpserver, settings):
    """Webhook and sink deliveries as the runtime role: each claim reads its subscriber's floor and
    raises it (``due_floor``), the sweep lowers it, with the documented grants alone."""
    settings.AUDIT_STREAM = {"WEBHOOK_ALLOWED_NETWORKS": ["127.0.0.0/8"], "WEBHOOK_TIMEOUT": [1, 1]}
    httpserver.expect_request("/hook").respond_with_data("ok")
    endpoint = WebhookEndpoint.objects.create(url=httpserver.url_for("/hook"))
    prefix = unique("floor")
    sink = Sink.objects.create(name=prefix, kind="redis", target=REDIS_URL, options={"stream_prefix": prefix})
    with _django_as(deployment.runtime):
        Product.objects.create(name="delivered", price=1)
        fold.fold("testapp_productevent")
        assert delivery.deliver(endpoint.pk).delivered == 1
        assert sink_delivery.deliver(sink.pk).delivered == 1
        assert sink_delivery.due_sinks(lower_floors=True) == []
    assert WebhookEndpoint.objects.get(pk=endpoint.pk).due_floor is not None
    assert Sink.objects.get(pk=sink.pk).due_floor is not None
    assert {m.status for m in [*WebhookMessage.objects.all(), *SinkMessage.objects.all()]} == {"delivered"}
    redis.Redis.from_url(REDIS_URL).delete(f"{prefix}:testapp.product")


def test_create_event_works_for_the_runtime_role(deployment):
    """Manual events go through the owner's function: the live row, with the context."""
    with _django_as(deployment.runtime):
        order = Order.objects.create(customer=Customer.objects.create(email="a@example.com", name="A"))
        Order.objects.filter(pk=order.pk).update(status="paid")
        with audit_stream.context(user="ops") as ctx:
            event = audit_stream.create_event(order, label="shipped")  # order.status is stale: "new"
    stored = OrderEvent.objects.get(pgh_id=event.pgh_id)
    assert (stored.pgh_label, stored.status, stored.pgh_context_id) == ("shipped", "paid", ctx.id)
    assert Context.objects.get(pk=ctx.id).metadata == {"user": "ops"}


def test_the_manual_event_function_refuses_an_undeclared_label(deployment):
    """Called by hand, the function records only the labels the model declares."""
    order = Order.objects.create(customer=Customer.objects.create(email="a@example.com", name="A"))
    function = audit_stream.triggers.create_event_function_name(OrderEvent)
    with _connect(deployment.runtime) as conn, pytest.raises(psycopg.errors.InvalidParameterValue):
        conn.execute(f"SELECT {function}('refunded', %s, NULL, NULL)", [str(order.pk)])
    assert not OrderEvent.objects.filter(pgh_label="refunded").exists()


def test_retention_as_the_runtime_role_deletes_no_history_and_says_why(deployment):
    """The runtime role's prune skips history with a message naming the fix; the owner's prune works."""
    product = Product.objects.create(name="kept", price=1)
    product.price = 2
    product.save()
    policy = retention.Policy(keep_last=1)
    with _django_as(deployment.runtime):
        report = retention.prune(overrides=policy, force=True, targets=["testapp.ProductEvent"])
    assert report.errors == [
        "testapp.ProductEvent: the role this runs as may not delete from testapp_productevent (history):"
        " prune it as the owner role (manage.py prune_history), or grant the privilege with"
        " manage.py audit_stream_grants --pruner."
    ]
    assert ProductEvent.objects.count() == 2
    report = retention.prune(overrides=policy, force=True, targets=["testapp.ProductEvent"])
    assert report.errors == []
    assert list(ProductEvent.objects.values_list("price", flat=True)) == [Decimal("2.00")]


# --- partitions ahead, kept by the runtime role through the owner's function ----------------------------


@pytest.fixture
def partitioned_tickets(deployment, settings):
    """TicketEvent's table partitioned (10 ids a partition, 2 ahead), owned as the deployment has it."""
    settings.AUDIT_STREAM = {
        **getattr(settings, "AUDIT_STREAM", {}),
        "PARTITIONS": {"testapp.TicketEvent": {"size": 10, "ahead": 2}},
    }
    if deployment.name == "two roles":
        # The owner ran the migrations: it may create in the schema and owns the table, its
        # partitions (made by other tests as the superuser, after this module's transfer) and sequence.
        _admin(f'GRANT CREATE ON SCHEMA public TO "{deployment.owner}"')
        _admin(
            "DO $$ DECLARE _t regclass; BEGIN"
            " FOR _t IN SELECT 'testapp_ticketevent'::regclass UNION ALL"
            " SELECT inhrelid::regclass FROM pg_inherits WHERE inhparent = 'testapp_ticketevent'::regclass"
            f" LOOP EXECUTE format('ALTER TABLE %s OWNER TO %I', _t, '{deployment.owner}'); END LOOP; END $$"
        )
    with _django_as(deployment.owner):  # migrate's part: convert if needed, record the layout
        partitions.sync()
    call_command("audit_stream_grants", deployment.runtime, "--apply", stdout=io.StringIO())
    return partitions.Layout("testapp_ticketevent", size=10, ahead=2)


def test_the_runtime_role_keeps_partitions_ahead(deployment, partitioned_tickets):
    """Beat runs as the runtime role: the partition function creates the ranges it cannot create itself."""
    with _django_as(deployment.runtime):
        for i in range(25):  # past the partitions made ahead: the last ones land in the default one
            Ticket.objects.create(title=f"t{i}")
        created = partitions.ensure(partitioned_tickets)
    assert created, "no partition was created"
    with connection.cursor() as cursor:
        parts = partitions.partitions(cursor, "testapp_ticketevent")
        assert not partitions.default_rows(cursor, "testapp_ticketevent")  # moved into their ranges
        cursor.execute("SELECT max(pgh_id) FROM testapp_ticketevent")
        newest = cursor.fetchone()[0]
    assert max(p.upper for p in parts if not p.default) >= newest + 2 * 10
    assert TicketEvent.objects.count() >= 25


def test_the_runtime_roles_fold_counts_each_partitions_events_through_the_trigger(
    deployment, partitioned_tickets
):
    """The runtime role cannot write the per-partition counts, yet its fold keeps them (as the owner)."""
    with _django_as(deployment.runtime):
        with audit_stream.context(user="counted"):
            for i in range(12):
                Ticket.objects.create(title=f"t{i}")
        fold.fold("testapp_ticketevent")
    context = Context.objects.get(metadata__user="counted").id
    counted = PartitionCount.objects.filter(context_id=context).aggregate(events=Sum("events"))["events"]
    assert counted == TicketEvent.objects.filter(pgh_context_id=context).count() == 12


def test_the_partition_function_serves_partitioned_history_alone(deployment):
    """Called by hand on any other table, the owner's function refuses: it creates nothing."""
    function = audit_stream.triggers.qualified("_audit_stream_ensure_partitions")
    with _connect(deployment.runtime) as conn, pytest.raises(psycopg.errors.InvalidParameterValue):
        conn.execute(f"SELECT {function}('testapp_product')")


def test_the_runtime_role_cannot_choose_the_partition_layout(deployment, partitioned_tickets):
    """The layout is the owner's, recorded on the table: the runtime role cannot rewrite it."""
    with _connect(deployment.runtime) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute(
            "COMMENT ON TABLE testapp_ticketevent IS 'audit_stream: partitions of 1 ids, 100000 ahead'"
        )


# --- deployment checks and the grants command ------------------------------------------------------


def _warnings_for_default():
    """``check --deploy``'s role warnings about the default database (the other alias is the superuser's)."""
    return [w for w in checks.check_database_role() if '"default"' in w.msg]


def test_check_deploy_is_silent_for_the_runtime_role(deployment):
    """Connected as the runtime role with the documented grants: no warning."""
    with _django_as(deployment.runtime):
        assert _warnings_for_default() == []


def test_check_deploy_warns_when_connected_as_the_owner_or_a_superuser(deployment):
    """W020 for a superuser, W021 for the owner of the history tables."""
    expected = "audit_stream.W021" if deployment.name == "two roles" else "audit_stream.W020"
    with _django_as(deployment.owner):
        ids = [warning.id for warning in _warnings_for_default()]
    assert expected in ids


def test_check_deploy_warns_when_the_runtime_role_may_write_history(deployment):
    """W022 once someone grants the runtime role a write privilege on an event table."""
    _admin(f'GRANT INSERT ON testapp_productevent TO "{deployment.runtime}"')
    try:
        with _django_as(deployment.runtime):
            warnings = _warnings_for_default()
    finally:
        _admin(f'REVOKE INSERT ON testapp_productevent FROM "{deployment.runtime}"')
    assert [warning.id for warning in warnings] == ["audit_stream.W022"]
    assert "testapp_productevent" in warnings[0].msg


def test_the_grants_command_refuses_the_owner_and_superusers(deployment):
    """Granting the runtime privileges to the owner would protect nothing: a clear error instead."""
    with pytest.raises(CommandError, match=r"superuser|owns audit_stream's tables"):
        call_command("audit_stream_grants", deployment.owner)


def test_the_grants_give_history_read_only(deployment):
    """Read history, never write it: SELECT and nothing else on every history table."""
    statements = grants.statements(deployment.runtime)
    for table in grants.history_tables():
        granted = [s for s in statements if f'"{table}" TO' in s and s.startswith("GRANT")]
        assert granted == [f'GRANT SELECT ON TABLE "public"."{table}" TO "{deployment.runtime}";']


def test_a_role_given_the_prune_privilege_may_delete_history(deployment):
    """``--pruner``: SELECT and DELETE on history; running the grants again takes them back."""
    product = Product.objects.create(name="kept", price=1)
    product.price = 2
    product.save()
    extra = [s for s in grants.statements(deployment.runtime, pruner=deployment.runtime) if "DELETE ON" in s]
    granted = f'GRANT SELECT, DELETE ON TABLE "public"."testapp_productevent" TO "{deployment.runtime}";'
    assert granted in extra
    for statement in extra:
        _admin(statement)
    try:
        with _django_as(deployment.runtime):
            report = retention.prune(
                overrides=retention.Policy(keep_last=1), force=True, targets=["testapp.ProductEvent"]
            )
        assert report.errors == []
        assert list(ProductEvent.objects.values_list("price", flat=True)) == [Decimal("2.00")]
    finally:
        call_command("audit_stream_grants", deployment.runtime, "--apply", stdout=io.StringIO())
    with _connect(deployment.runtime) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("DELETE FROM testapp_productevent")
