"""audit_stream.context(): grouping, metadata, isolation, and what reaches PostgreSQL."""

import datetime
import decimal
import uuid

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from django.db import connection, connections, transaction

import audit_stream
from audit_stream.models import Context
from tests.testapp.models import Customer, Order, OrderEvent, Product, ProductEvent

pytestmark = pytest.mark.django_db


def _context_of(name):
    return ProductEvent.objects.get(name=name, pgh_label="snapshot").pgh_context_id


def test_events_inside_a_context_share_one_context_row():
    with audit_stream.context(user="ada") as ctx:
        Product.objects.create(name="a")
        customer = Customer.objects.create(email="c@example.com", name="C")
        Order.objects.create(customer=customer)
        Product.objects.filter(name="a").update(price=3)
    assert set(ProductEvent.objects.values_list("pgh_context_id", flat=True)) == {ctx.id}
    assert set(OrderEvent.objects.values_list("pgh_context_id", flat=True)) == {ctx.id}
    assert Context.objects.get().metadata == {"user": "ada"}


def test_events_outside_a_context_have_none():
    Product.objects.create(name="a")
    assert _context_of("a") is None
    assert not Context.objects.exists()


def test_nested_contexts_add_metadata_to_the_outermost():
    with audit_stream.context(user="ada") as outer:
        with audit_stream.context(reason="import") as inner:
            Product.objects.create(name="a")
        Product.objects.create(name="b")
    assert inner is outer
    assert _context_of("a") == _context_of("b") == outer.id
    assert Context.objects.get().metadata == {"user": "ada", "reason": "import"}


def test_calling_context_adds_metadata_to_the_active_one():
    with audit_stream.context(user="ada") as ctx:
        Product.objects.create(name="a")
        audit_stream.context(ticket=42)
        Product.objects.create(name="b")
    assert Context.objects.get(pk=ctx.id).metadata == {"user": "ada", "ticket": 42}


def test_calling_context_without_an_active_one_is_ignored():
    audit_stream.context(ticket=42)
    Product.objects.create(name="a")
    assert _context_of("a") is None


def test_a_new_context_after_exit_gets_a_new_row():
    with audit_stream.context(n=1):
        Product.objects.create(name="a")
    with audit_stream.context(n=2):
        Product.objects.create(name="b")
    assert _context_of("a") != _context_of("b")
    assert sorted(c.metadata["n"] for c in Context.objects.all()) == [1, 2]


def test_context_row_is_written_once_per_statement_not_per_row(sql):
    """A bulk statement attaches the context once; the row is not rewritten."""
    with audit_stream.context(user="bulk") as ctx:
        Product.objects.bulk_create([Product(name=f"p{i}") for i in range(500)])
        before = sql("SELECT xmin::text FROM audit_stream_context WHERE id = %s", [ctx.id])
        Product.objects.update(stock=1)
        after = sql("SELECT xmin::text FROM audit_stream_context WHERE id = %s", [ctx.id])
    assert before == after  # same tuple version: unchanged metadata writes nothing
    assert ProductEvent.objects.filter(pgh_context_id=ctx.id).count() == 1000


def test_context_as_a_decorator():
    @audit_stream.context(job="nightly")
    def job(name):
        Product.objects.create(name=name)

    job("a")
    job("b")
    assert ProductEvent.objects.values("pgh_context_id").distinct().count() == 2
    assert {c.metadata["job"] for c in Context.objects.all()} == {"nightly"}


def test_context_as_an_async_decorator_and_context_manager():
    @audit_stream.context(job="async")
    async def job():
        await sync_to_async(Product.objects.create)(name="a")
        async with audit_stream.context(step=2):
            await sync_to_async(Product.objects.create)(name="b")

    async_to_sync(job)()
    assert _context_of("a") == _context_of("b")
    assert Context.objects.get().metadata == {"job": "async", "step": 2}


# -- serialisation and hostile values ------------------------------------------------------------


def test_dates_uuids_and_decimals_serialise():
    value = uuid.uuid4()
    with audit_stream.context(
        on=datetime.date(2026, 1, 2), at=datetime.datetime(2026, 1, 2, 3, 4, tzinfo=datetime.UTC),
        id=value, amount=decimal.Decimal("1.10"),
    ):  # fmt: skip
        Product.objects.create(name="a")
    assert Context.objects.get().metadata == {
        "on": "2026-01-02", "at": "2026-01-02T03:04:00Z", "id": str(value), "amount": "1.10",
    }  # fmt: skip


def test_unserialisable_metadata_raises_before_any_sql(django_assert_num_queries):
    with django_assert_num_queries(0), pytest.raises(TypeError, match=r"the value of 'blob' \(object\)"):
        audit_stream.context(user="ada", blob=object())


def test_unserialisable_metadata_added_later_raises_and_keeps_the_context():
    with audit_stream.context(user="ada") as ctx:
        with pytest.raises(TypeError, match="'bad'"):
            audit_stream.context(bad={1, 2})
        Product.objects.create(name="a")
    assert Context.objects.get(pk=ctx.id).metadata == {"user": "ada"}


@pytest.mark.parametrize(
    "value",
    [
        "it's",
        'say "hi"',
        "back\\slash",
        "'; DROP TABLE testapp_product; --",
        "$$; SELECT 1; $$",
        "%s %(name)s %%",
        "unicode: żółw 🐢 \u2028",
        "x" * 100_000,
        {"nested": ["list", 1, None, True, 2.5]},
    ],
    ids=["quote", "dquote", "backslash", "injection", "dollar", "percent", "unicode", "100kb", "nested"],
)
def test_hostile_metadata_is_stored_exactly(value):
    with audit_stream.context(value=value):
        Product.objects.create(name="a")
    assert Context.objects.get().metadata == {"value": value}
    assert Product.objects.filter(name="a").exists()


# -- what reaches PostgreSQL --------------------------------------------------------------------


class _Sent:
    """An inner execute wrapper: records exactly what goes to the driver (one call, one round trip)."""

    def __init__(self):
        self.calls = []

    def __call__(self, execute, sql, params, many, context):
        self.calls.append((sql, params))
        return execute(sql, params, many, context)


@pytest.fixture
def sent():
    recorder = _Sent()
    connection.ensure_connection()
    connection.execute_wrappers.append(recorder)  # innermost: after audit_stream's
    yield recorder
    connection.execute_wrappers.remove(recorder)


def test_context_adds_no_round_trip(sent):
    with audit_stream.context(user="ada"):
        Product.objects.create(name="a")
        Product.objects.filter(name="a").update(price=2)
    assert len(sent.calls) == 2


def test_context_values_are_bound_parameters(sent):
    with audit_stream.context(user="'; DROP TABLE x; --") as ctx:
        Product.objects.create(name="a")
    sql, params = sent.calls[0]
    assert sql.startswith("SELECT set_config('audit_stream.context_id', %s, true)")
    assert "DROP TABLE" not in sql and "SET LOCAL" not in sql.upper()
    assert params[:2] == (str(ctx.id), '{"user": "\'; DROP TABLE x; --"}')


@pytest.mark.parametrize(
    "statement",
    ["SET TRANSACTION ISOLATION LEVEL REPEATABLE READ", "SELECT 1", "  select count(*) FROM testapp_product",
     "SAVEPOINT s1", "SHOW work_mem"],
)  # fmt: skip
@pytest.mark.django_db(transaction=True)
def test_statements_that_cannot_fire_triggers_are_left_untouched(sent, statement):
    with transaction.atomic(), audit_stream.context(user="ada"), connection.cursor() as cursor:
        cursor.execute(statement)
    assert sent.calls[0][0] == statement


@pytest.mark.django_db(transaction=True)
def test_vacuum_is_left_untouched(sent):
    with audit_stream.context(user="ada"), connection.cursor() as cursor:
        cursor.execute("VACUUM testapp_product")
    assert sent.calls[-1][0] == "VACUUM testapp_product"


def test_raw_sql_without_params_keeps_its_percent_signs(sql):
    with audit_stream.context(user="ada"):
        sql("INSERT INTO testapp_product (name, price, stock, updated_at) VALUES ('100%', 1, 0, now())")
    assert ProductEvent.objects.get().name == "100%"


def test_raw_sql_with_named_params_is_supported():
    with audit_stream.context(user="ada") as ctx, connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO testapp_product (name, price, stock, updated_at) VALUES (%(n)s, 1, 0, now())",
            {"n": "named"},
        )
    assert _context_of("named") == ctx.id


@pytest.mark.django_db(transaction=True)
def test_executemany_carries_the_context():
    with audit_stream.context(user="ada") as ctx, connection.cursor() as cursor:
        cursor.executemany(
            "INSERT INTO testapp_product (name, price, stock, updated_at) VALUES (%s, 1, 0, now())",
            [("m1",), ("m2",)],
        )
    assert {_context_of("m1"), _context_of("m2")} == {ctx.id}


def test_insert_returning_still_returns_the_row_inside_a_context():
    with audit_stream.context(user="ada"):
        product = Product.objects.create(name="a")
        created = Product.objects.bulk_create([Product(name="b"), Product(name="c")])
    assert product.pk is not None and all(p.pk for p in created)


def test_update_rowcount_is_correct_inside_a_context():
    Product.objects.bulk_create([Product(name=f"p{i}") for i in range(3)])
    with audit_stream.context(user="ada"):
        assert Product.objects.update(stock=9) == 3


# -- no leaks -----------------------------------------------------------------------------------


def _setting(name):
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_setting(%s, true)", [name])
        return cursor.fetchone()[0]


@pytest.mark.django_db(transaction=True)
def test_context_ends_with_the_statement_in_autocommit():
    """Nothing stays on the (pooled) connection after the statement's transaction."""
    with audit_stream.context(user="ada"):
        Product.objects.create(name="a")
    assert _setting("audit_stream.context_id") in (None, "")
    Product.objects.create(name="b")
    assert _context_of("b") is None


def test_context_does_not_leak_to_later_statements_of_the_same_transaction():
    with transaction.atomic():
        with audit_stream.context(user="ada"):
            Product.objects.create(name="a")
        Product.objects.create(name="b")
        Product.objects.filter(name="a").update(price=5)
    assert _context_of("b") is None
    assert ProductEvent.objects.get(name="a", price=5).pgh_context_id is None


@pytest.mark.django_db(transaction=True)
def test_a_failed_statement_does_not_break_the_next_transaction():
    with audit_stream.context(user="ada"):
        Product.objects.create(name="dup")
        with pytest.raises(Exception, match="duplicate key"):
            Product.objects.create(name="dup")
        Product.objects.create(name="ok")
    assert _context_of("ok") == _context_of("dup")


# -- every database -----------------------------------------------------------------------------


@pytest.mark.django_db(databases=["default", "other"])
def test_context_reaches_a_second_database():
    with audit_stream.context(user="ada") as ctx:
        Product.objects.using("other").create(name="elsewhere")
        Product.objects.create(name="here")
    assert ProductEvent.objects.using("other").get().pgh_context_id == ctx.id
    assert Context.objects.using("other").get().metadata == {"user": "ada"}
    assert _context_of("here") == ctx.id
    assert connections["other"].vendor == "postgresql"


# -- autocommit: the id alone, once the context's row is known to exist ----------------------------


@pytest.mark.django_db(transaction=True)
def test_later_autocommit_writes_carry_only_the_context_id(sent):
    """Once a settings statement finds the context attached by this session, the id alone follows."""
    with audit_stream.context(user="ada") as ctx:
        Product.objects.create(name="a")
        Product.objects.create(name="b")  # finds the row that "a" attached
        Product.objects.create(name="c")
        Product.objects.filter(name="a").update(price=3)
    first, second, third, fourth = sent.calls
    assert first[0].startswith("SELECT set_config(")
    assert second[0].startswith("SELECT set_config(")
    assert third[0].startswith(f"/* audit_stream {ctx.id} */ INSERT")
    assert fourth[0].startswith(f"/* audit_stream {ctx.id} */ UPDATE")
    assert str(ctx.id) not in repr(third[1])  # the statement's own parameters, unchanged
    assert {e.pgh_context_id for e in ProductEvent.objects.all()} == {ctx.id}


@pytest.mark.django_db(transaction=True)
def test_a_contexts_first_write_sends_no_probe(sent):
    """One request, one context: the first write only sets the context (nothing can have attached it yet)."""
    with audit_stream.context(user="ada"):
        Product.objects.create(name="a")
        Product.objects.create(name="b")
    first, second = (sql for sql, _ in sent.calls)
    assert "audit_stream.attached" not in first.split(";")[0]
    assert "audit_stream.attached" in second.split(";")[0]  # from the second write on, it asks


@pytest.mark.django_db
def test_writes_in_a_transaction_send_no_probe(sent):
    """Inside atomic() the answer could not be used (the block may roll back): no probe."""
    with audit_stream.context(user="ada"), transaction.atomic():
        Product.objects.create(name="a")
        Product.objects.create(name="b")
    assert all("audit_stream.attached" not in sql.split(";")[0] for sql, _ in sent.calls)


@pytest.mark.django_db(transaction=True)
def test_new_metadata_is_sent_again_then_the_id_alone(sent):
    with audit_stream.context(user="ada") as ctx:
        Product.objects.create(name="a")
        audit_stream.context(reason="refund")
        Product.objects.create(name="b")
        Product.objects.create(name="c")
        Product.objects.create(name="d")
    assert [sql.startswith("SELECT set_config(") for sql, _ in sent.calls] == [True, True, True, False]
    assert Context.objects.get(pk=ctx.id).metadata == {"user": "ada", "reason": "refund"}


@pytest.mark.django_db(transaction=True)
def test_a_failed_first_write_is_not_trusted(sent):
    Product.objects.create(name="dup")
    sent.calls.clear()
    with audit_stream.context(user="ada") as ctx:
        with pytest.raises(Exception, match="duplicate key"):
            Product.objects.create(name="dup")
        Product.objects.create(name="ok")
    assert all(sql.startswith("SELECT set_config(") for sql, _ in sent.calls)
    assert Context.objects.get(pk=ctx.id).metadata == {"user": "ada"}
    assert _context_of("ok") == ctx.id


@pytest.mark.django_db(transaction=True)
def test_inside_a_transaction_every_write_carries_the_metadata(sent):
    with audit_stream.context(user="ada"):
        Product.objects.create(name="a")  # committed: trusted in autocommit
        with transaction.atomic():
            Product.objects.create(name="b")
            Product.objects.create(name="c")
    assert [sql.startswith("SELECT set_config(") for sql, _ in sent.calls] == [True, True, True]


@pytest.mark.django_db(transaction=True)
def test_the_trust_expires(sent, monkeypatch):
    import sys

    module = sys.modules["audit_stream.context"]
    clock = [1000.0]
    monkeypatch.setattr(module.time, "monotonic", lambda: clock[0])
    with audit_stream.context(user="ada"):
        Product.objects.create(name="a")
        Product.objects.create(name="b")
        Product.objects.create(name="c")  # the id alone
        clock[0] += module._TRUST_SECONDS + 1
        Product.objects.create(name="d")
        Product.objects.create(name="e")
    assert [sql.startswith("SELECT set_config(") for sql, _ in sent.calls] == [True, True, False, True, False]


@pytest.mark.django_db(transaction=True)
def test_the_id_comment_is_per_database(sent):
    with audit_stream.context(user="ada") as ctx:
        Product.objects.create(name="a")
        Product.objects.create(name="b")
        Customer.objects.create(email="c@example.com", name="C")  # untracked table, same database
    assert sent.calls[2][0].startswith(f"/* audit_stream {ctx.id} */ ")


@pytest.mark.parametrize(
    "comment",
    [
        "/* audit_stream not-a-uuid */ ",
        "/* audit_stream zzzzzzzz-zzzz-zzzz-zzzz-zzzzzzzzzzzz */ ",
        "/* audit_stream 00000000----000000000000000000000000 */ ",
        "/* audit_stream 1454FAD6-D853-48EE-AA45-F38919F3E435 */ ",
    ],
)
@pytest.mark.django_db(transaction=True)
def test_a_statement_that_only_looks_like_it_gets_no_context_and_no_error(sql, comment):
    sql(comment + "INSERT INTO testapp_product (name, price, stock, updated_at) VALUES ('x', 1, 0, now())")
    assert _context_of("x") is None


# -- the id alone never points to a row that does not exist ---------------------------------------


def _no_event_write(kind):
    """A first write inside a context that records no event."""
    if kind == "untracked insert":
        Customer.objects.create(email="c@example.com", name="C")
    elif kind == "save that changes nothing":
        Product.objects.get(name="existing").save(update_fields=["name"])  # same name: no event
    else:  # "zero-row update"
        Product.objects.filter(name="nobody").update(price=1)


@pytest.mark.parametrize("first", ["untracked insert", "save that changes nothing", "zero-row update"])
@pytest.mark.django_db(transaction=True)
def test_events_after_a_first_write_without_events_point_to_an_existing_context(first):
    """In autocommit, a first write that records nothing must not let later events carry a dangling id."""
    with audit_stream.context(user="ada"):
        Product.objects.create(name="existing")
    with audit_stream.context(user="bob") as ctx:
        _no_event_write(first)
        Product.objects.create(name="a")
        Product.objects.create(name="b")
        Product.objects.create(name="c")
    for name in ("a", "b", "c"):
        event = ProductEvent.objects.get(name=name, pgh_label="snapshot")
        assert event.pgh_context_id == ctx.id
        assert event.pgh_context.metadata == {"user": "bob"}


# -- which statements are writes ------------------------------------------------------------------

_INSERT = "INSERT INTO testapp_product (name, price, stock, updated_at) VALUES ('raw', 1, 0, now())"


@pytest.mark.parametrize(
    "prefix",
    ["\n\n        ", "\t", "/* from the reporting job */ ", "/* outer /* nested */ still */\n", "-- why\n  "],
)
@pytest.mark.django_db(transaction=True)
def test_a_write_after_whitespace_or_comments_carries_the_context(sql, prefix):
    """Leading newlines, indentation and comments do not hide a write from the context."""
    with audit_stream.context(user="ada") as ctx:
        sql(prefix + _INSERT)
    assert _context_of("raw") == ctx.id
    assert Context.objects.get(pk=ctx.id).metadata == {"user": "ada"}


@pytest.mark.django_db(transaction=True)
def test_a_psycopg_composed_write_carries_the_context():
    """psycopg.sql compositions are rendered and carry the context like strings."""
    from psycopg import sql as psql

    query = psql.SQL("INSERT INTO {} (name, price, stock, updated_at) VALUES ({}, 1, 0, now())").format(
        psql.Identifier("testapp_product"), psql.Literal("composed 100%")
    )
    with audit_stream.context(user="ada") as ctx, connection.cursor() as cursor:
        cursor.execute(query)
    assert _context_of("composed 100%") == ctx.id


@pytest.mark.django_db(transaction=True)
def test_a_psycopg_composed_read_runs_inside_a_context():
    """A composed SELECT is not a write, and runs untouched."""
    from psycopg import sql as psql

    Product.objects.create(name="p")
    query = psql.SQL("SELECT count(*) FROM {} WHERE name = {}").format(
        psql.Identifier("testapp_product"), psql.Placeholder()
    )
    with audit_stream.context(user="ada"), connection.cursor() as cursor:
        cursor.execute(query, ["p"])
        assert cursor.fetchone() == (1,)


@pytest.mark.django_db(transaction=True)
def test_sessions_attaching_an_existing_context_do_not_wait_for_each_other():
    """An open transaction that attached a context holds no lock on its row for others."""
    import json

    import psycopg

    with audit_stream.context(user="ada") as ctx:
        Product.objects.create(name="first")
    settings = connection.settings_dict
    params = {"host": settings["HOST"], "port": settings["PORT"], "dbname": settings["NAME"]}
    attach = (
        "SELECT set_config('audit_stream.context_id', %s, true),"
        " set_config('audit_stream.context_metadata', %s, true)"
    )
    values = [str(ctx.id), json.dumps({"user": "ada"})]
    insert = "INSERT INTO testapp_product (name, price, stock, updated_at) VALUES (%s, 1, 0, now())"
    with psycopg.connect(user=settings["USER"], **params) as first, first.transaction():
        first.execute(attach, values)
        first.execute(insert, ["held open"])
        with psycopg.connect(user=settings["USER"], autocommit=True, **params) as second:
            second.execute("SET lock_timeout = '2s'")
            with second.transaction():
                second.execute(attach, values)
                second.execute(insert, ["not blocked"])
    assert _context_of("not blocked") == _context_of("held open") == ctx.id
