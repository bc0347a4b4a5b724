"""Every process refuses an invalid setting the same way: one line on stderr naming the
variable and its rule, exit status 2, no traceback, and never a key or a password, even
one planted in the very value refused.

Real processes: ``celery -A worker worker|beat|flower``, every ``snackvideo`` command, and
``make run``'s devstack (run directly: make adds a line of its own, ``make: *** ... Error
2``). None gets as far as connecting to anything: the settings are read first.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import PYTHON, ROOT

pytestmark = pytest.mark.processes

SECRET = "pk_live_PLANTED4w8Secret"
PASSWORD = "redis-PLANTED-pw-9x"
SNACKVIDEO = str(Path(PYTHON).parent / "snackvideo")

#: A valid environment holding both kinds of secret; each case spoils one variable.
BASE_ENV = {
    "PATH": "/usr/bin:/bin",
    "REDIS_URL": f"redis://dispatch:{PASSWORD}@127.0.0.1:1/0",
    "SCALEV_STOREFRONT_API_KEYS": json.dumps({"shop-1": SECRET}),
    "SCALEV_STOREFRONT_API_KEY": SECRET,
}

#: (variable, bad value): negative, infinite, not a number, beyond what Redis accepts,
#: not JSON, a key map with a value that is no string, keys that are no header value, an
#: unknown throttle scope, credentials in the base URL, a broken REDIS_URL, the producer's
#: own variables, and a check across variables.
BAD_VALUES = [
    ("SNACKVIDEO_MAX_ATTEMPTS", "-1"),
    ("SNACKVIDEO_MAX_AGE_SECONDS", "inf"),
    ("SNACKVIDEO_MAX_AGE_SECONDS", "1e16"),
    ("SNACKVIDEO_SCHEDULER_POLL_SECONDS", "nan"),
    ("SNACKVIDEO_RETRY_BASE_SECONDS", "abc"),
    ("SNACKVIDEO_METRICS_PORT", "70000"),
    ("SCALEV_STOREFRONT_API_KEYS", f"not json {SECRET}"),
    ("SCALEV_STOREFRONT_API_KEYS", json.dumps({"shop-1": [SECRET]})),
    ("SCALEV_STOREFRONT_API_KEYS", json.dumps({"shop-1": f"{SECRET}\r\nX-Injected: 1"})),
    ("SCALEV_STOREFRONT_API_KEY", f" {SECRET}"),
    ("SNACKVIDEO_THROTTLE_SCOPE", "global"),
    ("SNACKVIDEO_LOG_FORMAT", "yaml"),
    ("SNACKVIDEO_REDRIVE_REASONS", "http_4O4"),
    ("SCALEV_API_BASE_URL", f"https://dispatch:{PASSWORD}@api.scalev.com"),
    ("REDIS_URL", f"redis://dispatch:{PASSWORD}@127.0.0.1:99999/0"),
    ("REDIS_URL", f"redis://127.0.0.1:1/0?password={PASSWORD}"),
    ("SNACKVIDEO_ENQUEUE_TIMEOUT_SECONDS", "abc"),
    ("SNACKVIDEO_IDEMPOTENCY_TTL_SECONDS", "-1"),
    ("SNACKVIDEO_VISIBILITY_TIMEOUT_SECONDS", "60"),
]

CELERY_WORKER = [PYTHON, "-m", "celery", "-A", "worker", "worker", "--pool", "prefork"]
CELERY_BEAT = [PYTHON, "-m", "celery", "-A", "worker", "beat"]
CELERY_FLOWER = [PYTHON, "-m", "celery", "-A", "worker", "flower", "--port=0"]
DEVSTACK = [PYTHON, "-m", "scripts.devstack"]
CLI_COMMANDS = [
    ["status"],
    ["status", "--json"],
    ["dlq", "list"],
    ["dlq", "show", "some-job"],
    ["dlq", "replay", "some-job"],
    ["dlq", "purge", "some-job", "--yes"],
    ["dlq", "stats"],
    ["enqueue", "--store", "shop-1"],
    ["sandbox", "--port", "0"],
]
#: The processes beyond the two that get the whole table, with three values each.
OTHER_PROCESSES = {
    "celery beat": CELERY_BEAT,
    "celery flower": CELERY_FLOWER,
    "devstack": DEVSTACK,
    **{f"snackvideo {' '.join(args)}": [SNACKVIDEO, *args] for args in CLI_COMMANDS},
}
SOME_BAD_VALUES = [BAD_VALUES[0], BAD_VALUES[8], BAD_VALUES[12]]


def assert_refused(command: list[str], variable: str, value: str) -> str:
    env = {**BASE_ENV, variable: value}
    done = subprocess.run(
        command,
        cwd=ROOT,
        env=env,
        input='{"click_id": "c", "events": [{"event_name": "purchase"}]}\n',
        capture_output=True,
        text=True,
        timeout=60,
    )
    shown = f"{command[2:]} {variable}={value!r}:\nstdout={done.stdout!r}\nstderr={done.stderr!r}"
    assert done.returncode == 2, shown
    assert done.stdout == "", shown
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and done.stderr.endswith("\n"), shown
    (line,) = lines
    # devstack prefixes what it checks itself (the ports it fills in) with its name.
    assert line.removeprefix("devstack: ").startswith("error: invalid configuration: "), shown
    assert variable in line, shown
    assert "Traceback" not in line
    assert SECRET not in line and PASSWORD not in line, shown
    return line


@pytest.mark.parametrize(("variable", "value"), BAD_VALUES)
def test_the_worker_refuses_each_bad_value_in_one_line(variable: str, value: str) -> None:
    assert_refused(CELERY_WORKER, variable, value)


@pytest.mark.parametrize(("variable", "value"), BAD_VALUES)
def test_the_cli_refuses_each_bad_value_in_one_line(variable: str, value: str) -> None:
    assert_refused([SNACKVIDEO, "status"], variable, value)


@pytest.mark.parametrize("process", sorted(OTHER_PROCESSES))
def test_every_process_refuses_the_same_way(process: str) -> None:
    for variable, value in SOME_BAD_VALUES:
        assert_refused(OTHER_PROCESSES[process], variable, value)


def test_a_key_that_is_no_header_value_names_the_store_not_the_key() -> None:
    line = assert_refused(
        CELERY_WORKER,
        "SCALEV_STOREFRONT_API_KEYS",
        json.dumps({"shop-1": f"{SECRET}\r\nX-Injected: 1"}),
    )
    assert line == (
        'error: invalid configuration: SCALEV_STOREFRONT_API_KEYS: the key of store "shop-1" '
        "is not a valid HTTP header value (control character)"
    )


@pytest.mark.parametrize("variable", ["SANDBOX_PORT", "FLOWER_PORT"])
def test_devstack_names_a_bad_port_it_would_build_on(variable: str) -> None:
    line = assert_refused(DEVSTACK, variable, "80x")
    assert line == (
        f"devstack: error: invalid configuration: {variable}: must be an integer from 1 to 65535"
    )


#: The ingest service reads the producer's variables and its own, never the worker's.
INGEST_BAD_VALUES = [
    ("SNACKVIDEO_INGEST_PORT", "0"),
    ("SNACKVIDEO_INGEST_WORKERS", "abc"),
    ("SNACKVIDEO_INGEST_TOKENS", json.dumps({"ci": f"{SECRET} with spaces"})),
    ("SNACKVIDEO_INGEST_TOKENS", json.dumps({SECRET: "ci"})),  # name and secret swapped
    ("REDIS_URL", f"redis://dispatch:{PASSWORD}@127.0.0.1:99999/0"),
    ("SNACKVIDEO_ENQUEUE_TIMEOUT_SECONDS", "abc"),
]


@pytest.mark.parametrize(("variable", "value"), INGEST_BAD_VALUES)
def test_the_ingest_service_refuses_each_bad_value_in_one_line(variable: str, value: str) -> None:
    assert_refused([SNACKVIDEO, "ingest"], variable, value)
