"""The tracked model of the retention and webhook benchmarks."""

from django.db import models

import audit_stream


@audit_stream.track()
class Item(models.Model):
    """Tracked with the default events, Snapshot() + BeforeDelete(): events in ``perfapp_itemevent``."""

    name = models.CharField(max_length=100)
    price = models.DecimalField(max_digits=10, decimal_places=2)
    stock = models.IntegerField()
    note = models.TextField()

    def __str__(self) -> str:
        return self.name
