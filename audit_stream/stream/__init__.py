"""The stream: from committed events to the change feed, asynchronously.

* :mod:`~audit_stream.stream.fold` turns committed events into ``Change`` rows,
  exactly once and in order per object, batch by batch
  (:mod:`~audit_stream.stream.batch`, the batch's query;
  :mod:`~audit_stream.stream.interval`, where an interval starts;
  :mod:`~audit_stream.stream.unfolded`, which events are not folded yet);
* :mod:`~audit_stream.stream.checkpoint` keeps each table's (each lane's)
  progress, :mod:`~audit_stream.stream.lanes` splits a table among workers,
  :mod:`~audit_stream.stream.relane` changes their number, and
  :mod:`~audit_stream.stream.recovery` recovers a checkpoint restored onto
  another cluster;
* :mod:`~audit_stream.stream.wakeup` arms the flag that lets writers NOTIFY an
  idle worker, and decides when a table has work;
* :mod:`~audit_stream.stream.listen` is the loop run by ``python -m worker.listen``.
"""
