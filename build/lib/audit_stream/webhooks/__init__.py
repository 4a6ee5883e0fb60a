"""Webhooks: the change feed delivered to subscribers as signed HTTP POSTs.

* :mod:`~audit_stream.webhooks.models`: endpoints, messages and attempts;
* :mod:`~audit_stream.webhooks.messages`: messages recorded by the fold, in its transaction;
* :mod:`~audit_stream.webhooks.safety`: which URLs may be called;
* :mod:`~audit_stream.webhooks.signing`: Standard Webhooks headers;
* :mod:`~audit_stream.webhooks.delivery`: sending, retries, dead letters, replay.
"""
