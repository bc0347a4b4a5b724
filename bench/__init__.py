"""Benchmarks that print comparison tables (``make bench``); not timed tests.

``python -m bench`` runs them all and writes ``docs/benchmarks.md``; each module also runs
alone (``python -m bench.delivery --help``). ``bench.common`` starts the private parts
they share: a redis-server, the sandbox, celery workers.
"""
