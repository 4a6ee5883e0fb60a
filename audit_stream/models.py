"""Models: ``Context``, the abstract ``Event`` every event model extends (both from
:mod:`audit_stream.event`), and the stream's tables."""

from __future__ import annotations

import pgtrigger
from django.contrib.postgres.fields import ArrayField
from django.core.serializers.json import DjangoJSONEncoder
from django.db import models
from django.db.models.functions import Now

from audit_stream import keys, registry, triggers
from audit_stream.aggregate import AggregateEventQuery, AggregateEventQuerySet
from audit_stream.event import Context, Event, TransactionNow, context_field
from audit_stream.exact import ExactDecoder

__all__ = [
    "AggregateEvent",
    "AggregateEventQuery",
    "AggregateEventQuerySet",
    "BaseAggregateEvent",
    "Change",
    "Checkpoint",
    "Context",
    "ContextCount",
    "DdlLog",
    "Event",
    "FoldRun",
    "Heartbeat",
    "LoggedTable",
    "ObjectCount",
    "PartitionCount",
    "RetentionRun",
    "RowLog",
    "Sink",
    "SinkMessage",
    "TransactionNow",
    "WebhookAttempt",
    "WebhookEndpoint",
    "WebhookMessage",
    "context_field",
    "create_event_model",
]


def _append_only(model: type[models.Model]) -> None:
    """Protect one of audit_stream's own logs (row log, DDL log), whatever ``APPEND_ONLY`` says.

    Their triggers live in audit_stream's own migrations, which a setting must
    not change: ``APPEND_ONLY = False`` would otherwise make ``makemigrations``
    write a migration into the installed package. The setting applies to the
    event models of your apps.
    """
    if not model._meta.abstract:
        pgtrigger.register(triggers.AppendOnly())(model)


class ChangeQuerySet(models.QuerySet):
    """Queries over the change feed, each served by an index."""

    def for_object(self, obj: models.Model) -> ChangeQuerySet:
        """The changes of one object, oldest first."""
        model = obj._meta.concrete_model
        return self.filter(model=model._meta.label_lower, object_id=keys.object_id(model, obj.pk)).order_by(
            "created_at", "event_id"
        )

    def for_model(self, model: type[models.Model] | str) -> ChangeQuerySet:
        """The changes of a model (class or ``"app_label.model"``)."""
        label = model if isinstance(model, str) else model._meta.concrete_model._meta.label_lower
        return self.filter(model=label.lower())

    def for_transaction(self, transaction_id: int) -> ChangeQuerySet:
        """The changes one transaction made, across every tracked table, in the order it made them.

        ``transaction_id`` is the events' ``pgh_xid`` (``Change.transaction_id``,
        ``transaction.id`` in payloads). Ordered by the statement that wrote
        each change (``command_id``), then by ``event_id`` within a statement.
        Changes of tables not folded yet are missing: compare the count with
        the payloads' ``transaction.changes`` to know the transaction is whole.
        """
        return self.filter(transaction_id=transaction_id).order_by("command_id", "event_id", "event_table")

    def by_user(self, user: object) -> ChangeQuerySet:
        """Changes made in a context whose ``user`` metadata is ``user`` (a user or its pk)."""
        pk = getattr(user, "pk", user)
        ids = Context.objects.filter(metadata__user=pk).values("id")
        return self.filter(context_id__in=ids)


class Change(models.Model):
    """The change feed: one row per folded event, with its diff against the previous one.

    Written by the stream's fold (``audit_stream.stream.fold``), in the same
    transaction as the fold's checkpoint, so each event appears exactly once.
    """

    id = models.BigAutoField(primary_key=True)
    event_table = models.TextField(help_text="The event model's table.")
    event_id = models.BigIntegerField(help_text="pgh_id of the event.")
    model = models.TextField(help_text='The tracked model, "app_label.model".')
    object_id = models.TextField(null=True, help_text="The tracked object's primary key, as text.")
    label = models.TextField()
    # Indexed with its change's id (audit_stream_change_context_id, below), not alone.
    context = models.ForeignKey(
        Context, null=True, on_delete=models.DO_NOTHING, db_constraint=False, db_index=False, related_name="+"
    )
    created_at = models.DateTimeField(
        help_text="The event's pgh_created_at: the start time of its transaction (not its commit time)."
    )
    folded_at = models.DateTimeField(db_default=Now())
    diff = models.JSONField(encoder=DjangoJSONEncoder, decoder=ExactDecoder, help_text="{field: [old, new]}")
    snapshot = models.JSONField(
        encoder=DjangoJSONEncoder, decoder=ExactDecoder, help_text="The event's tracked fields."
    )
    transaction_id = models.BigIntegerField(
        null=True, help_text="The writing transaction (the event's pgh_xid); null before audit_stream 0017."
    )
    command_id = models.BigIntegerField(
        null=True, help_text="The command inside the transaction that wrote the event (its order there)."
    )
    mask_digests = models.JSONField(
        null=True,
        help_text="Keyed digests of the masked fields' values, which the fold compares to tell whether"
        " they changed (audit_stream.masking); never shown nor sent.",
    )

    objects = ChangeQuerySet.as_manager()

    class Meta:
        db_table = "audit_stream_change"
        permissions = [("view_dashboard", "Can view the audit_stream dashboard and act on it")]
        constraints = [
            # A second fold of the same event would fail here: exactly once.
            models.UniqueConstraint(fields=["event_table", "event_id"], name="audit_stream_change_event"),
        ]
        indexes = [
            models.Index(fields=["model", "object_id", "event_id"], name="audit_stream_change_object"),
            models.Index(fields=["event_table", "object_id", "event_id"], name="audit_stream_change_prev"),
            models.Index(fields=["label", "created_at"], name="audit_stream_change_label"),
            models.Index(fields=["created_at"], name="audit_stream_change_created"),
            # The dashboard's user filter: each context's changes, newest first (dashboard/feed.py).
            models.Index(fields=["context", "id"], name="audit_stream_change_context_id"),
            models.Index(fields=["transaction_id", "command_id"], name="audit_stream_change_xact"),
            # Changes without an object (schema changes, event models without pgh_obj): retention
            # finds them, and each table and model's newest, without reading the feed.
            models.Index(
                fields=["event_table", "model", "event_id"],
                name="audit_stream_change_objectless",
                condition=models.Q(object_id__isnull=True),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.model}:{self.object_id} {self.label} #{self.event_id}"


class Checkpoint(models.Model):
    """How far the fold has read one lane of one event table.

    ``snapshot`` is a ``pg_snapshot``: every transaction it shows as committed
    has been folded (for the events of this lane). A fold in progress over
    several batches records its ``target`` snapshot and the last ``pgh_id``
    done (``position``). A table folded in ``lanes`` lanes has one row per
    lane (audit_stream.stream.lanes); most tables have one, lane 0.
    """

    pk = models.CompositePrimaryKey("event_table", "lane")
    event_table = models.TextField()
    lane = models.SmallIntegerField(default=0, help_text="Which lane of the table (0 to lanes - 1).")
    lanes = models.SmallIntegerField(default=1, help_text="How many lanes the table is folded in.")
    snapshot = models.TextField(default="1:1:")
    target = models.TextField(null=True)
    position = models.BigIntegerField(default=0)
    folded = models.BigIntegerField(default=0, help_text="Events folded so far.")
    updated_at = models.DateTimeField(db_default=Now())
    # Identity (audit_stream.stream.checkpoint): the table follows renames, the
    # snapshot belongs to one cluster, and a restore is recovered from exactly.
    relid = models.BigIntegerField(null=True, help_text="pg_class oid of the table (follows renames).")
    former_names = ArrayField(models.TextField(), db_default=[], help_text="The table's earlier names.")
    cluster = models.TextField(null=True, help_text="System identifier of the cluster the snapshot is of.")
    high = models.BigIntegerField(null=True, help_text="Highest pgh_id committed when `target` was taken.")
    floor = models.BigIntegerField(
        db_default=0, help_text="Events up to this pgh_id came from a restore and are folded."
    )

    class Meta:
        db_table = "audit_stream_checkpoint"


class BaseAggregateEvent(models.Model):
    """The abstract base of aggregate events: subclass it to declare your own.

    ``AggregateEvent`` is the one audit_stream ships. A subclass may add
    methods, and fields that are read from each event's context metadata by
    field name (as in django-pghistory)::

        class UserAggregateEvent(BaseAggregateEvent):
            user = models.ForeignKey(User, null=True, on_delete=models.DO_NOTHING,
                                     db_constraint=False, related_name="+")

            class Meta(BaseAggregateEvent.Meta):  # a Meta of its own would drop the ordering
                managed = False

        UserAggregateEvent.objects.target(order).filter(user__username="ada")
    """

    pgh_key = models.TextField(primary_key=True, help_text='"<event table>:<pgh_id>"')
    pgh_id = models.BigIntegerField()
    pgh_created_at = models.DateTimeField()
    pgh_label = models.TextField()
    pgh_table = models.TextField()
    pgh_model = models.TextField()
    pgh_obj_id = models.TextField(null=True)
    pgh_context = models.ForeignKey(
        Context, null=True, on_delete=models.DO_NOTHING, db_constraint=False, related_name="+"
    )
    pgh_data = models.JSONField(decoder=ExactDecoder)
    pgh_diff = models.JSONField(
        null=True, decoder=ExactDecoder, help_text="{column: [old, new]}; None for the first event."
    )

    objects = AggregateEventQuerySet.as_manager()

    class Meta:
        abstract = True
        ordering = ["pgh_created_at", "pgh_table", "pgh_id"]

    def __str__(self) -> str:
        return f"{self.pgh_model}:{self.pgh_obj_id} {self.pgh_label}"

    @property
    def event_model(self):
        """The concrete event model this row comes from."""
        return registry.event_models[self.pgh_table]

    def event(self):
        """The event row itself (typed fields, for reverting)."""
        return self.event_model.objects.get(pgh_id=self.pgh_id)


class AggregateEvent(BaseAggregateEvent):
    """The events that reference an object, across event tables, with diffs (a read-only view).

    ``AggregateEvent.objects.target(obj).across(*event_models)``: rows ordered by
    time, filterable like any QuerySet, e.g. by
    ``pgh_context__metadata__user=request.user.pk``.
    """

    class Meta(BaseAggregateEvent.Meta):
        managed = False
        db_table = "audit_stream_aggregateevent"


class FoldRun(models.Model):
    """One fold task's work on one event table: for throughput and lag on the dashboard."""

    event_table = models.TextField()
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField(db_default=Now())
    folded = models.PositiveIntegerField()
    lag_ms = models.PositiveIntegerField(
        null=True, help_text="From the oldest folded event's transaction start to its fold."
    )

    class Meta:
        db_table = "audit_stream_foldrun"
        indexes = [models.Index(fields=["finished_at"], name="audit_stream_foldrun_time")]


class Heartbeat(models.Model):
    """The last sign of life of a stream process (listener, worker, beat)."""

    name = models.TextField(primary_key=True, help_text='"listener@host:pid", "worker@host:pid"')
    kind = models.TextField()
    host = models.TextField()
    pid = models.PositiveIntegerField()
    started_at = models.DateTimeField(db_default=Now())
    last_seen = models.DateTimeField(db_default=Now())
    info = models.JSONField(default=dict, encoder=DjangoJSONEncoder)

    class Meta:
        db_table = "audit_stream_heartbeat"


class RetentionRun(models.Model):
    """One application of the retention policies: when, what was pruned per table, errors."""

    started_at = models.DateTimeField(db_default=Now())
    finished_at = models.DateTimeField(null=True)
    trigger = models.TextField(help_text='"beat" or "command"')
    dry_run = models.BooleanField(default=False)
    rows = models.JSONField(default=dict, help_text="{table: rows deleted (or that would be)}")
    errors = models.JSONField(default=list)

    class Meta:
        db_table = "audit_stream_retentionrun"
        indexes = [models.Index(fields=["started_at"], name="audit_stream_retention_time")]


class ObjectCount(models.Model):
    """How many changes, and how many folded events, one object has: retention's ``keep_last`` reads it.

    One row per (event table, object id) of the change feed, kept by a
    statement-level trigger on ``Change`` (``audit_stream.retention.counts``):
    each change written adds one to both counts, each change deleted takes one
    from ``changes``; retention takes its deleted events from ``events``. The
    counts only ever err upwards (a dropped partition is not subtracted), and
    retention ranks the rows themselves of the objects it selects here, so a
    count too high costs a little reading, never a wrong row.
    """

    pk = models.CompositePrimaryKey("event_table", "object_id")
    event_table = models.TextField()
    object_id = models.TextField()
    changes = models.BigIntegerField(default=0)
    events = models.BigIntegerField(default=0)

    class Meta:
        db_table = "audit_stream_object_count"
        indexes = [
            # Objects with more than one row: those keep_last may prune (a range of the count).
            models.Index(
                fields=["changes"], name="audit_stream_count_changes", condition=models.Q(changes__gt=1)
            ),
            models.Index(
                fields=["event_table", "events"],
                name="audit_stream_count_events",
                condition=models.Q(events__gt=1),
            ),
        ]


class ContextCount(models.Model):
    """How many folded events refer to one context: retention prunes contexts without reading event tables.

    One row per context of the change feed, kept by a statement-level trigger
    on ``Change`` (``audit_stream.retention.references``): each change written
    adds one (each change is one event folded); retention (batches and
    partition drops) and erasure take the folded events they delete away.
    Changes themselves, and events not folded yet, are checked apart. The
    count only ever errs upwards (an event folded twice by a recovery, the
    migration's count of unfolded events): a context counted too high is
    kept, never one still referred to deleted.
    """

    context_id = models.UUIDField(primary_key=True)
    events = models.BigIntegerField(default=0)

    class Meta:
        db_table = "audit_stream_context_count"


class PartitionCount(models.Model):
    """How many folded events each partition of a partitioned history table holds, per context and in all.

    Kept so that retention drops a partition without reading it
    (``audit_stream.partitions.counts``): the fold's trigger on
    ``Change`` adds the events it folds, each to the partition that holds it
    (``slot`` 0-15, one of sixteen rows per key so that lanes folding one
    table rarely wait for each other); retention's batches and erasure add
    the folded events they delete, negative (``slot`` -1). ``context_id`` is
    the nil UUID for the partition's total. A partition whose events were
    folded before it was counted (converted, or older than the counts, or
    holding rows moved out of the default partition) carries a row with
    ``slot`` -2: it is read when dropped, as before. ``filenode`` is the
    partition's file when counted: a partition rewritten since (``TRUNCATE``,
    ``VACUUM FULL``, ``CLUSTER``, pg_repack, a restore) is read too.
    """

    pk = models.CompositePrimaryKey("partition", "filenode", "slot", "context_id")
    partition = models.TextField()
    filenode = models.BigIntegerField()
    slot = models.SmallIntegerField()
    context_id = models.UUIDField()
    events = models.BigIntegerField(default=0)

    class Meta:
        db_table = "audit_stream_partition_count"


class RowLog(Event):
    """The shared row log of tables logged with ``manage.py initlogging`` (no ``@track``).

    One row per inserted, updated or deleted row, written by one statement-level
    trigger per table and statement (``audit_stream.rowlog``). As in pgMemento,
    an update keeps only the columns it changed; unlike pgMemento the new values
    are kept too, because the change feed is built later, when the live row may
    have moved on:

    ============  ======================  =================================
    pgh_label     old_data                new_data
    ============  ======================  =================================
    ``insert``    NULL                    the whole new row
    ``update``    changed columns, before changed columns, after
    ``delete``    the whole old row       NULL
    ============  ======================  =================================

    An ``UPDATE`` that changes nothing is not logged.
    """

    logged_table = models.TextField(help_text='The logged table, "schema.table".')
    pgh_obj_id = models.TextField(help_text="The row's primary key, as text.")
    pgh_context = models.ForeignKey(
        Context, null=True, on_delete=models.DO_NOTHING, db_constraint=False, related_name="+"
    )
    old_data = models.JSONField(null=True, decoder=ExactDecoder)
    new_data = models.JSONField(null=True, decoder=ExactDecoder)

    class Meta:
        db_table = "audit_stream_row_log"
        verbose_name = "row log entry"
        verbose_name_plural = "row log"
        indexes = [
            # History of one row (admin, revert, retention's keep_last, erasure).
            models.Index(fields=["logged_table", "pgh_obj_id", "pgh_id"], name="audit_stream_row_log_row"),
            # The fold reads by writing transaction (see audit_stream.stream.unfolded).
            models.Index(fields=["pgh_xid"], name="audit_stream_row_log_xid"),
        ]

    def __str__(self) -> str:
        return f"{self.logged_table}:{self.pgh_obj_id} {self.pgh_label}"

    @classmethod
    def _pgh_setup(cls) -> None:  # not the event model of a tracked model: only append-only
        _append_only(cls)

    @property
    def pgh_table(self) -> str:
        return self._meta.db_table

    @property
    def event_model(self):
        return type(self)

    @property
    def pgh_diff(self) -> dict:
        """``{column: [old, new]}``, as in the change feed."""
        if self.pgh_label == "insert":
            return {column: [None, value] for column, value in (self.new_data or {}).items()}
        if self.pgh_label == "delete":
            return {column: [value, None] for column, value in (self.old_data or {}).items()}
        old = self.old_data or {}
        return {column: [old.get(column), value] for column, value in (self.new_data or {}).items()}


class LoggedTable(models.Model):
    """A table that ``initlogging`` logs: what it looked like when last seen.

    Kept up to date by the DDL event trigger, which compares it with the table
    after each ``ALTER TABLE`` to record renames and column changes.
    """

    relid = models.BigIntegerField(primary_key=True, help_text="pg_class oid.")
    schema_name = models.TextField()
    table_name = models.TextField()
    pk_column = models.TextField()
    columns = models.JSONField(default=list, help_text='[{"name": ..., "type": ...}]')
    logged_at = models.DateTimeField(db_default=Now())

    class Meta:
        db_table = "audit_stream_logged_table"

    def __str__(self) -> str:
        return f"{self.schema_name}.{self.table_name}"


class DdlLog(Event):
    """Schema changes of logged tables (``ALTER``, ``RENAME``, ``DROP``), so old row logs stay readable.

    Written by the DDL event trigger that ``initlogging`` installs.
    """

    logged_table = models.TextField(help_text='The table after the command, "schema.table".')
    former_name = models.TextField(null=True, help_text="The table's name before a rename.")
    command = models.TextField(help_text="The statement, as sent.")
    columns_before = models.JSONField(default=list)
    columns_after = models.JSONField(default=list)

    class Meta:
        db_table = "audit_stream_ddl_log"
        verbose_name = "DDL log entry"
        verbose_name_plural = "DDL log"
        indexes = [
            # The idle check and the fold find unfolded entries through it (audit_stream.stream.unfolded).
            models.Index(fields=["pgh_xid"], name="audit_stream_ddl_log_xid"),
        ]

    def __str__(self) -> str:
        return f"{self.logged_table}: {self.pgh_label}"

    @classmethod
    def _pgh_setup(cls) -> None:
        _append_only(cls)


from audit_stream.sinks.models import Sink, SinkMessage  # noqa: E402
from audit_stream.tracking import create_event_model  # noqa: E402
from audit_stream.webhooks.models import WebhookAttempt, WebhookEndpoint, WebhookMessage  # noqa: E402
