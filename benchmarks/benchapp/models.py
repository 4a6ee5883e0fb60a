"""One table per variant, all with the same columns, so only the tracking differs.

Every item has a real Django foreign key to :class:`Category`: PostgreSQL
checks it with a deferred constraint trigger, which is what makes
django-pgtrigger's per-row ``EXCEPTION`` block expensive in bulk writes.
"""

import pghistory
from django.db import models

import audit_stream


class Category(models.Model):
    """A small table the items point to."""

    name = models.CharField(max_length=50)

    def __str__(self) -> str:
        return self.name


class Item(models.Model):
    """The columns every variant's table has."""

    name = models.CharField(max_length=100)
    price = models.DecimalField(max_digits=10, decimal_places=2)
    stock = models.IntegerField()
    note = models.TextField()
    category = models.ForeignKey(Category, on_delete=models.PROTECT, related_name="+")

    class Meta:
        abstract = True

    def __str__(self) -> str:
        return self.name


class PlainItem(Item):
    """Untracked: the baseline."""


@audit_stream.track()
class AsItem(Item):
    """audit_stream's default events: ``Snapshot()`` and ``BeforeDelete()``."""


@audit_stream.track(audit_stream.Snapshot(), audit_stream.BeforeDelete())
class AsNoNotifyItem(Item):
    """audit_stream with explicit events; the benchmark runs it with NOTIFY off (see variants.py)."""


@audit_stream.track()
class AsInvokerItem(Item):
    """audit_stream's default events, with SECURITY DEFINER and the pinned search_path taken
    off its trigger functions after migrate (``db.strip_security_definer``): what they cost."""


@audit_stream.track()
class AsPartItem(Item):
    """audit_stream's default events into an event table partitioned by ``pgh_id``
    (``PARTITIONS`` in benchmarks/settings.py; ``migrate`` converts it)."""


class LogItem(Item):
    """Not tracked: the benchmark logs its table with ``initlogging`` (the row log)."""


@pghistory.track(pghistory.InsertEvent(), pghistory.UpdateEvent(), pghistory.DeleteEvent())
class PhRowItem(Item):
    """django-pghistory's default: row-level triggers."""


@pghistory.track(
    pghistory.InsertEvent(),
    pghistory.UpdateEvent(),
    pghistory.DeleteEvent(),
    level=pghistory.Statement,
)
class PhStmtItem(Item):
    """django-pghistory with statement-level triggers."""
