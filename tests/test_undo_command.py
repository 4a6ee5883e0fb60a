"""``manage.py undo``: a context or a transaction, dry run, force, summary, clear errors."""

from __future__ import annotations

import io

import pytest
from django.core.management import CommandError, call_command

import audit_stream
from audit_stream.models import Context
from tests.testapp.models import Product, ProductEvent

pytestmark = pytest.mark.django_db


def _undo(*args) -> str:
    out = io.StringIO()
    call_command("undo", *args, "--no-input", stdout=out, stderr=io.StringIO())
    return out.getvalue()


@pytest.fixture
def request_context():
    lamp = Product.objects.create(name="lamp", price=10)
    with audit_stream.context() as ctx:
        Product.objects.filter(pk=lamp.pk).update(price=99)
        Product.objects.create(name="desk", price=20)
    return ctx.id


def test_dry_run_prints_the_plan_and_changes_nothing(request_context):
    """--dry-run: the summary and one line per object; nothing changed."""
    output = _undo(str(request_context), "--dry-run")
    assert f"Undo of context {request_context}: 1 to delete, 0 to restore, 1 to update" in output
    assert "testapp.product" in output and "99.00 -> 10.00" in output
    assert "Dry run: nothing was changed." in output
    assert Product.objects.count() == 2


def test_the_command_undoes_a_context_and_says_where_the_undo_is_recorded(request_context):
    """Without --dry-run it undoes, then prints the counts and the undo's own context."""
    output = _undo(str(request_context))
    assert list(Product.objects.values_list("name", "price")) == [("lamp", 10)]
    undo_context = Context.objects.get(metadata__undo_of=[str(request_context)])
    assert "1 deleted, 0 restored, 1 updated." in output
    assert f"manage.py undo {undo_context.pk}" in output


def test_the_command_undoes_a_transaction(request_context):
    """--transaction XID undoes the changes of that transaction."""
    xid = ProductEvent.objects.latest("pgh_id").pgh_xid
    output = _undo("--transaction", str(xid))
    assert "deleted" in output and not Product.objects.exists()


def test_conflicts_stop_the_command_with_each_listed_unless_forced(request_context):
    """A later change: CommandError listing it, suggesting --force; --force overwrites."""
    Product.objects.filter(name="lamp").update(stock=3)
    with pytest.raises(
        CommandError, match=r"(?s)changed after it by testapp_productevent:.*--force"
    ) as error:
        _undo(str(request_context))
    assert "nothing was changed" in str(error.value)
    assert Product.objects.count() == 2
    output = _undo(str(request_context), "--force")
    assert "1 later change(s) overwritten" in output
    assert list(Product.objects.values_list("name", "price", "stock")) == [("lamp", 10, 0)]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "Give a context id, or --transaction XID"),
        (
            ("00000000-0000-0000-0000-000000000000", "--transaction", "5"),
            "Give a context id, or --transaction",
        ),
        (("not-a-uuid",), "is not a context id"),
        (("--transaction", "abc"), "A transaction id is a whole number"),
        (("00000000-0000-0000-0000-000000000000",), "No context 00000000-0000-0000-0000-000000000000"),
    ],
)
def test_bad_arguments_are_clear_errors(args, message):
    """Missing, doubled or malformed targets are refused with a sentence that says what to give."""
    with pytest.raises(CommandError, match=message):
        _undo(*args)


def test_a_large_undo_lists_a_bounded_number_of_objects():
    """Hundreds of objects: the list stops at --show, the rest is counted."""
    with audit_stream.context() as ctx:
        Product.objects.bulk_create([Product(name=f"p{i}", price=1) for i in range(120)])
    output = _undo(str(ctx.id), "--show", "5")
    assert "... and 115 more (--show N lists more)." in output
    assert "120 deleted" in output and not Product.objects.exists()
