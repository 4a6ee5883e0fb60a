"""A tracked model and the shared harness of ``benchmarks.retention`` and ``benchmarks.webhooks``.

* :mod:`.models`: ``perfapp.Item``, tracked with ``@audit_stream.track()``
  (events in ``perfapp.ItemEvent``); its migrations are committed.
* :mod:`.settings`: Django settings of the benchmarks and of every process they start.
* :mod:`.harness`: database set-up, child processes, statistics, reports.
* :mod:`.writer`: ``python -m benchmarks.perfapp.writer``, a paced single-row writer.
* :mod:`.receiver`: ``python -m benchmarks.perfapp.receiver``, a webhook receiver.
"""
