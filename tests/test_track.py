"""track() options and the shape of the generated event models."""

import pgtrigger
import pytest
from django.contrib.auth.models import User
from django.core.management import call_command

import audit_stream
from audit_stream import tracking
from tests.testapp import models as app
from tests.testapp.models import Label, LabelEvent, Note, Order, Product, ProductEvent

pytestmark = pytest.mark.django_db

EVENT_MODELS = [app.ProductEvent, app.PriceChange, app.OrderEvent, app.NoteEvent, LabelEvent, app.UserEvent]


def _columns(model):
    return [f.column for f in model._meta.concrete_fields]


def test_event_model_carries_pgh_fields_and_the_tracked_fields():
    assert _columns(ProductEvent) == [
        "pgh_id", "pgh_created_at", "pgh_label", "pgh_xid", "id", "name", "price", "stock", "updated_at",
        "pgh_obj_id", "pgh_context_id",
    ]  # fmt: skip


def test_pgh_id_is_a_bigint(sql):
    for model in EVENT_MODELS:
        rows = sql(
            "SELECT data_type FROM information_schema.columns"
            " WHERE table_name = %s AND column_name = 'pgh_id'",
            [model._meta.db_table],
        )
        assert rows == [("bigint",)], model


def test_fields_records_only_the_listed_fields():
    assert _columns(app.PriceChange) == [
        "pgh_id",
        "pgh_created_at",
        "pgh_label",
        "pgh_xid",
        "price",
        "pgh_obj_id",
        "pgh_context_id",
    ]


def test_exclude_leaves_out_the_listed_fields():
    assert "note" not in _columns(app.NoteEvent)
    assert "title" in _columns(app.NoteEvent)


def test_obj_fk_none_and_context_fk_none_drop_those_columns():
    Note.objects.create(title="t", note="n")
    assert "pgh_obj_id" not in _columns(app.NoteEvent)
    assert "pgh_context_id" not in _columns(app.NoteEvent)
    assert list(app.NoteEvent.objects.values_list("pgh_label", "title")) == [("snapshot", "t")]


def test_model_name_and_related_name():
    product = Product.objects.create(name="x", price=1)
    Product.objects.filter(pk=product.pk).update(price=2)
    assert app.PriceChange._meta.db_table == "testapp_pricechange"
    assert list(product.price_changes.values_list("pgh_label", flat=True)) == ["price_changed"]


def test_event_foreign_keys_have_no_database_constraint(sql):
    """History must outlive the object and the context: no FK constraint, no cascade."""
    rows = sql(
        "SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND conrelid::regclass::text = ANY(%s)",
        [[m._meta.db_table for m in EVENT_MODELS]],
    )
    assert rows == [(0,)]


def test_tracked_foreign_keys_are_recorded_as_plain_ids():
    customer = app.Customer.objects.create(email="c@example.com", name="C")
    order = Order.objects.create(customer=customer)
    event = app.OrderEvent.objects.get(pgh_label="after_insert")
    assert event.customer_id == customer.pk == order.customer_id


def test_every_event_table_is_indexed_on_object_and_id(sql):
    for model in EVENT_MODELS:
        if model is app.NoteEvent:
            continue  # no pgh_obj
        rows = sql("SELECT indexdef FROM pg_indexes WHERE tablename = %s", [model._meta.db_table])
        assert any("(pgh_obj_id, pgh_id)" in indexdef for (indexdef,) in rows), model


def test_one_objects_history_is_an_index_scan(sql):
    Product.objects.bulk_create([Product(name=f"p{i}") for i in range(2000)])
    sql("ANALYZE testapp_productevent")
    plan = "\n".join(
        r[0] for r in sql("EXPLAIN SELECT * FROM testapp_productevent WHERE pgh_obj_id = 7 ORDER BY pgh_id")
    )
    assert "Index Scan" in plan or "Index Only Scan" in plan or "Bitmap Index Scan" in plan, plan


def test_get_event_model_lets_the_user_declare_the_model(sql):
    assert issubclass(LabelEvent, audit_stream.models.Event) if hasattr(audit_stream, "models") else True
    rows = sql("SELECT indexname FROM pg_indexes WHERE tablename = 'testapp_labelevent'")
    assert ("labelevent_created",) in rows
    Label.objects.create(code="x", text="X")
    assert LabelEvent.objects.count() == 0  # only "renamed" is tracked


def test_third_party_model_is_tracked_into_an_app_of_ours():
    """auth.User tracked with app_label="testapp": migrations live in testapp."""
    user = User.objects.create_user("ada", "ada@example.com", "pw")
    User.objects.filter(pk=user.pk).update(email="ada@example.org")
    User.objects.filter(pk=user.pk).update(last_login="2026-01-01T00:00:00Z")  # untracked field
    assert list(app.UserEvent.objects.order_by("pgh_id").values_list("pgh_label", "email")) == [
        ("snapshot", "ada@example.com"),
        ("snapshot", "ada@example.org"),
    ]
    assert app.UserEvent._meta.app_label == "testapp"


def test_third_party_app_label_is_refused():
    with pytest.raises(ValueError, match='pass app_label="<one of your apps>"'):
        audit_stream.track()(User)


def test_unknown_app_label_is_refused():
    with pytest.raises(ValueError, match="is not an installed app"):
        audit_stream.track(app_label="nope")(User)


def test_migrations_are_complete():
    """Triggers are installed through migrations, and none are missing."""
    call_command("makemigrations", "--check", "--dry-run", verbosity=0)


def test_triggers_are_installed_and_current():
    from pgtrigger import installation

    assert not installation.prunable()
    for uri, _model, trigger in [(u, m, t) for u, (m, t) in pgtrigger.registry._registry.items()]:
        status = trigger.get_installation_status(_model)[0]
        assert status == "INSTALLED", uri


def test_event_triggers_are_statement_level_without_exception_blocks(sql):
    """No per-row function call and no subtransaction on the application's tables: bulk writes stay linear."""
    rows = sql(
        """
        SELECT t.tgname, (t.tgtype & 1) = 1 AS row_level, p.prosrc
        FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid
        WHERE NOT t.tgisinternal AND t.tgname LIKE 'pgtrigger_%%'
          AND t.tgrelid::regclass::text NOT LIKE 'audit_stream%%'  -- not the stream's own tables
        """
    )
    assert rows
    for name, row_level, source in rows:
        assert not row_level, name
        assert "EXCEPTION WHEN" not in source.upper(), name
        assert "_pgtrigger_should_ignore" not in source, name


def test_pgtrigger_ignore_skips_history():
    """pgtrigger.ignore() still works, without an exception block."""
    product = Product.objects.create(name="quiet", price=1)
    uri = next(u for u in pgtrigger.registry._registry if u.startswith("testapp.Product:snapshot_upd"))
    with pgtrigger.ignore(uri):
        Product.objects.filter(pk=product.pk).update(price=5)
    Product.objects.filter(pk=product.pk).update(price=6)
    assert list(ProductEvent.objects.values_list("price", flat=True).order_by("pgh_id")) == [1, 6]


def test_labels_are_registered_per_tracked_model():
    assert tracking._labels[(Order, "shipped")] is app.OrderEvent
    assert tracking._labels[(Product, "price_changed")] is app.PriceChange
