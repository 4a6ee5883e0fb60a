"""Two tables with the same columns: one tracked by audit_stream, one not."""

from django.db import models

import audit_stream


class Row(models.Model):
    """The columns of both tables: a few of the usual kinds."""

    name = models.CharField(max_length=100)
    price = models.DecimalField(max_digits=10, decimal_places=2)
    stock = models.IntegerField()
    note = models.TextField()

    class Meta:
        abstract = True

    def __str__(self) -> str:
        return self.name


@audit_stream.track()
class TrackedRow(Row):
    """Tracked with the default events, Snapshot() + BeforeDelete(): its events feed the stream."""


class PlainRow(Row):
    """Untracked twin: the baseline for write throughput."""
