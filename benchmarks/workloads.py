"""The write workloads: what is timed, what exists before, and what must be recorded.

A workload's ``prepare`` does the untimed work (building objects, fetching
rows to update) and returns the closure that is timed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal

from django.db.models import F

from benchmarks.variants import Variant

Timed = Callable[[], None]


@dataclass(frozen=True)
class Sizes:
    """How many rows each workload writes."""

    single: int = 2_000
    bulk: int = 20_000
    linearity: tuple[int, ...] = (5_000, 20_000, 40_000)

    def scaled(self, factor: float) -> Sizes:
        """These sizes multiplied by ``factor`` (for ``--quick``)."""
        return Sizes(
            single=max(1, int(self.single * factor)),
            bulk=max(1, int(self.bulk * factor)),
            linearity=tuple(max(1, int(n * factor)) for n in self.linearity),
        )


@dataclass(frozen=True)
class Workload:
    """One timed write pattern.

    Attributes:
        key: A short name for tables and JSON.
        description: What is timed, for the report.
        rows: Rows written; also the number of events each tracked variant must record.
        prefill: Rows inserted (with triggers off) before the run.
        rows_after: Rows the item table must hold after the run.
        in_context: Whether the timed loop runs inside the library's context.
        prepare: ``(variant, rows, category_ids) -> timed closure``.
        linearity: True for the extra ``bulk_create`` sizes of the linearity table.
        context_per_row: Each row is written in a new context (one context row per row).
    """

    key: str
    description: str
    rows: int
    prefill: int
    rows_after: int
    in_context: bool
    prepare: Callable[[Variant, int, list[int]], Timed]
    linearity: bool = False
    context_per_row: bool = False


def _values(i: int, category_ids: list[int]) -> dict:
    """The field values of the ``i``-th new item."""
    return {
        "name": f"item {i}",
        "price": Decimal("19.90"),
        "stock": i,
        "note": "written by the benchmark",
        "category_id": category_ids[i % len(category_ids)],
    }


def _inserts(in_context: bool):
    """Single-row ``Model.objects.create()`` calls, each its own (autocommit) transaction."""

    def prepare(variant: Variant, rows: int, category_ids: list[int]) -> Timed:
        manager = variant.model.objects
        values = [_values(i, category_ids) for i in range(rows)]
        scope = variant.context if in_context else contextlib.nullcontext

        def timed() -> None:
            with scope():
                for kwargs in values:
                    manager.create(**kwargs)

        return timed

    return prepare


def _inserts_new_context(variant: Variant, rows: int, category_ids: list[int]) -> Timed:
    """One request, one context: each single-row ``create()`` in a new context of its own.

    The common web case (``HistoryMiddleware`` opens a context per request):
    every transaction sends new context metadata and writes a new ``Context``
    row. The untracked variant runs the same loop without a context.
    """
    manager = variant.model.objects
    values = [_values(i, category_ids) for i in range(rows)]
    scope = variant.context

    def timed() -> None:
        for kwargs in values:
            with scope():
                manager.create(**kwargs)

    return timed


def _saves(in_context: bool):
    """Single-row ``save()`` updates of existing rows, each its own transaction."""

    def prepare(variant: Variant, rows: int, category_ids: list[int]) -> Timed:
        objects = list(variant.model.objects.order_by("pk")[:rows])
        scope = variant.context if in_context else contextlib.nullcontext

        def timed() -> None:
            with scope():
                for obj in objects:
                    obj.stock += 1
                    obj.save()

        return timed

    return prepare


def _bulk_create(variant: Variant, rows: int, category_ids: list[int]) -> Timed:
    """One ``bulk_create()`` call (Django batches it; one transaction)."""
    model = variant.model
    objects = [model(**_values(i, category_ids)) for i in range(rows)]
    return lambda: model.objects.bulk_create(objects)


def _queryset_update(variant: Variant, rows: int, category_ids: list[int]) -> Timed:
    """One ``UPDATE`` statement changing every row."""
    manager = variant.model.objects
    return lambda: manager.update(stock=F("stock") + 1)


def _queryset_delete(variant: Variant, rows: int, category_ids: list[int]) -> Timed:
    """``QuerySet.delete()``: Django's fast path, one ``DELETE`` statement (nothing cascades)."""
    manager = variant.model.objects
    return lambda: manager.all().delete()


def build(sizes: Sizes) -> list[Workload]:
    """The workloads for these sizes, in the order they run."""
    n, bulk = sizes.single, sizes.bulk
    workloads = [
        Workload("insert", f"{n:,} x create(), autocommit", n, 0, n, False, _inserts(False)),
        Workload("insert_ctx", f"{n:,} x create(), in one context", n, 0, n, True, _inserts(True)),
        Workload(
            "insert_new_ctx",
            f"{n:,} x create(), each in a new context",
            n,
            0,
            n,
            True,
            _inserts_new_context,
            context_per_row=True,
        ),
        Workload("save", f"{n:,} x save() update, autocommit", n, n, n, False, _saves(False)),
        Workload("save_ctx", f"{n:,} x save() update, in one context", n, n, n, True, _saves(True)),
        Workload("bulk_create", f"bulk_create of {bulk:,} rows", bulk, 0, bulk, False, _bulk_create),
        Workload(
            "qs_update", f"QuerySet.update() of {bulk:,} rows", bulk, bulk, bulk, False, _queryset_update
        ),
        Workload("qs_delete", f"QuerySet.delete() of {bulk:,} rows", bulk, bulk, 0, False, _queryset_delete),
    ]
    for size in sizes.linearity:
        if size != bulk:
            workloads.append(
                Workload(
                    f"bulk_create_{size}",
                    f"bulk_create of {size:,} rows",
                    size,
                    0,
                    size,
                    False,
                    _bulk_create,
                    linearity=True,
                )
            )
    return workloads
