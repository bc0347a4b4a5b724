"""The layout's promises: no module imports itself through others, the ``snackvideo``
commands start without Celery, only ``status`` builds the Celery app, and every package
ships the Lua scripts that sit beside it. (Which package may import which: the
import-linter contracts in pyproject.toml, run by ``lint-imports``.)

Each command runs in a real subprocess (the CLI's own ``main``, as the ``snackvideo``
script calls it); afterwards the process reports which modules it imported.
"""

from __future__ import annotations

import json
import subprocess
import tomllib
from pathlib import Path

import grimp
import pytest
import redis

from producers.keys import DELIVERY_QUEUE
from tests.conftest import PYTHON, ROOT, STORE
from tests.queue_helpers import event

#: Runs one command through the CLI's main, then writes its exit status and the Celery
#: modules it imported to the file named by argv[1].
PROBE = """
import json, sys
report, args = sys.argv[1], sys.argv[2:]
sys.argv = ["snackvideo", *args]
from worker.cli.main import main
try:
    code = main(args)
except SystemExit as exc:
    code = exc.code
celery = sorted(m for m in sys.modules if m.split(".")[0] in ("celery", "kombu", "billiard"))
with open(report, "w") as out:
    json.dump({"code": code, "celery": celery}, out)
"""


def run_cli(tmp_path: Path, args: list[str], redis_url: str, stdin: str = "") -> dict[str, object]:
    report = tmp_path / "report.json"
    done = subprocess.run(
        [PYTHON, "-c", PROBE, str(report), *args],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "REDIS_URL": redis_url},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(report.read_text())
    return result


@pytest.mark.processes
@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["sandbox", "--help"],
        ["ingest", "--help"],
        ["dlq", "list"],
        ["dlq", "stats", "--json"],
    ],
    ids=["help", "sandbox", "ingest", "dlq-list", "dlq-stats"],
)
def test_commands_start_without_celery(tmp_path: Path, redis_url: str, args: list[str]) -> None:
    result = run_cli(tmp_path, args, redis_url)
    assert result == {"code": 0, "celery": []}


@pytest.mark.processes
def test_enqueue_queues_an_event_without_importing_celery(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis
) -> None:
    payload = json.dumps(event("layout-1"))
    result = run_cli(tmp_path, ["enqueue", "--store", STORE], redis_url, stdin=payload + "\n")
    assert result == {"code": 0, "celery": []}
    assert redis_client.llen(DELIVERY_QUEUE) == 1


@pytest.mark.processes
def test_status_is_the_command_that_builds_the_celery_app(tmp_path: Path, redis_url: str) -> None:
    # Its worker ping is a Celery broadcast: the probe sees Celery here, so its silence
    # for the other commands means something.
    result = run_cli(tmp_path, ["status", "--timeout", "0.2"], redis_url)
    assert result["code"] == 0
    assert "celery" in result["celery"]


def test_every_package_ships_the_lua_beside_it() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = {
        ".".join(path.parent.relative_to(ROOT).parts)
        for pattern in ("worker/**/__init__.py", "producers/**/__init__.py", "sandbox/__init__.py")
        for path in ROOT.glob(pattern)
    }
    assert on_disk <= set(config["packages"])
    with_lua = {
        ".".join(path.parent.relative_to(ROOT).parts)
        for top in ("worker", "producers", "sandbox")
        for path in (ROOT / top).glob("**/*.lua")
    }
    shipped = {package for package, files in config["package-data"].items() if "*.lua" in files}
    assert with_lua and with_lua <= shipped


def test_no_module_imports_itself_through_others() -> None:
    # grimp reads every import statement, those inside functions too: a cycle hidden in a
    # function is still one module needing another that needs it.
    graph = grimp.build_graph("worker", "producers", "sandbox", "scripts", "ingest")
    cycles = sorted(
        (importer, imported)
        for importer in graph.modules
        for imported in graph.find_modules_directly_imported_by(importer)
        if graph.chain_exists(importer=imported, imported=importer)
    )
    assert cycles == []
