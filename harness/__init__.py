"""The parts the tests and the benchmarks start and drive: one harness for both.

    paths.py         ROOT (the checkout) and PYTHON (the interpreter running us)
    errors.py        HarnessError and NoRedisServer: what a caller turns into fail/skip
    waiting.py       wait_until: poll a condition instead of sleeping a fixed time
    ports.py         free_port
    redis_server.py  RedisServer: a private redis-server process
    sandbox.py       Sandbox: ``python -m sandbox`` in its own process, over its admin API
    worker.py        Worker: a real ``celery worker`` process group; worker_env
    proc.py          facts about a process from /proc (RSS, CPU time, children)
    events.py        event: a request body the producer and the sandbox accept

Nothing here calls pytest: a timeout or a part that does not start raises HarnessError,
which tests/conftest.py turns into a failure (or a skip) and ``python -m bench`` prints.
worker/, producers/ and sandbox/ never import this package (pyproject's contracts).
"""
