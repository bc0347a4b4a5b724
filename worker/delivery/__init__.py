"""Delivering one job to Scalev: the decisions of the README's outcomes table.

    dispatcher.py           Dispatcher: one job to its outcome (delivered, parked, dead-lettered)
    scalev.py               the HTTP client: one session, no redirects, a bounded response read
    request_deadline.py     the watchdog that cuts a request at connect + read timeout
    guarded_connections.py  urllib3 connections that obey that deadline
    resolver.py             name resolution with a time bound
    header_values.py        whether a storefront key can travel as an HTTP header value
    backoff.py              retry waits: exponential with jitter
    internal_errors.py      errors nothing classifies, told apart from Redis outages

Nothing here imports Celery: the task in ``worker.tasks`` adapts messages to the dispatcher.
Package files hold no imports, so importing one module never imports its siblings.
"""
