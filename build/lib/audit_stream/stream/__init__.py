"""The stream: from committed events to the change feed, asynchronously.

* :mod:`~audit_stream.stream.fold` turns committed events into ``Change`` rows,
  exactly once and in order per object;
* :mod:`~audit_stream.stream.wakeup` arms the flag that lets writers NOTIFY an
  idle worker, and decides when a table has work;
* :mod:`~audit_stream.stream.listen` is the loop run by ``python -m worker.listen``.
"""
