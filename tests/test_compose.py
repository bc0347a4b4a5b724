"""docker-compose.yml, read as data (no Docker engine runs here): services, commands, Redis
flags, the Procfile's variables, where the keys go, and the two documented env files.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from ingest.settings import IngestSettings
from producers.settings import ProducerSettings
from sandbox.state import DEFAULT_STORES
from tests.conftest import ROOT
from worker.settings import Settings

COMPOSE = ROOT / "docker-compose.yml"
PROCFILE = ROOT / "Procfile"
SANDBOX_ENV = ROOT / "deploy" / "sandbox.env"
PRODUCTION_ENV = ROOT / "deploy" / "production.env.example"
STATE_DIR = "/var/lib/snackvideo"
#: What an operator puts in REDIS_PASSWORD (never in a committed file).
PASSWORD = "0123456789abcdef0123456789abcdef"
#: What the worker reads: its settings but the producer's own (enqueue timeout, ...).
WORKER_VARIABLES = {
    Settings.variable_of(field)
    for field in Settings.model_fields
    if field == "redis_url" or field not in ProducerSettings.model_fields
}

_VARIABLE = re.compile(r"\$\{(\w+)(?:(:?[-?])([^}]*))?\}")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return dict(yaml.safe_load(COMPOSE.read_text()))


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return dict(compose["services"])


def procfile() -> dict[str, str]:
    lines = (line.partition(":") for line in PROCFILE.read_text().splitlines() if line.strip())
    return {name.strip(): command.strip() for name, _, command in lines}


def program(command: str) -> list[str]:
    """The celery/snackvideo invocation of a Procfile line (after any ``mkdir ... && exec``)."""
    last = command.split("&&")[-1].strip()
    return shlex.split(last.removeprefix("exec "))


def flags(tokens: list[str]) -> set[str]:
    return {token.split("=")[0] for token in tokens if token.startswith("--")}


def command_tokens(service: dict[str, Any]) -> list[str]:
    command = service["command"]
    return list(command) if isinstance(command, list) else shlex.split(command)


def referenced(text: str) -> set[str]:
    return {match.group(1) for match in _VARIABLE.finditer(text)}


def read_env_file(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip()
    return values


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}`` and ``${VAR:?error}``, as compose reads them."""

    def substitute(match: re.Match[str]) -> str:
        name, operator, argument = match.groups()
        value = env.get(name)
        if operator in (":-", "-") and not value:
            return argument
        if operator in (":?", "?") and not value:
            raise LookupError(f"{name}: {argument}")
        return value or ""

    return _VARIABLE.sub(substitute, text)


def resolved(service: dict[str, Any], env: dict[str, str]) -> dict[str, str]:
    return {name: interpolate(str(v), env) for name, v in service["environment"].items()}


# -- services and commands ------------------------------------------------------------------


def test_the_services_and_one_image(services: dict[str, Any]) -> None:
    assert set(services) == {
        "redis", "worker", "beat", "flower", "ingest", "sandbox", "prometheus", "grafana"
    }  # fmt: skip
    ours = ("worker", "beat", "flower", "ingest", "sandbox")
    images = {services[name]["image"] for name in ours}
    assert len(images) == 1
    assert all(services[name]["build"] == "." for name in ours)
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert dockerfile.startswith("# ") and "FROM python:3.11-slim" in dockerfile
    assert "pip install ." in dockerfile


def test_every_procfile_process_runs_the_same_command(services: dict[str, Any]) -> None:
    processes = procfile()
    assert set(processes) == {"worker", "beat", "flower", "ingest", "sandbox"}
    for name, command in processes.items():
        expected = program(command)
        tokens = command_tokens(services[name])
        # The same program and subcommand (celery -A worker beat, snackvideo sandbox) ...
        head = 4 if expected[0] == "celery" else 2
        assert tokens[:head] == expected[:head], name
        # ... with every option the Procfile gives it.
        assert flags(expected) <= flags(tokens), (name, flags(expected) - flags(tokens))


def test_services_get_the_procfile_variables(services: dict[str, Any]) -> None:
    for name, command in procfile().items():
        missing = referenced(command) - set(services[name]["environment"])
        assert not missing, (name, missing)


def test_the_worker_can_be_given_every_setting(services: dict[str, Any]) -> None:
    missing = WORKER_VARIABLES - set(services["worker"]["environment"])
    assert not missing, f"add to docker-compose.yml's worker environment: {sorted(missing)}"


def test_worker_concurrency_comes_from_the_environment(services: dict[str, Any]) -> None:
    tokens = command_tokens(services["worker"])
    assert tokens[tokens.index("--concurrency") + 1] == "${WORKER_CONCURRENCY:-8}"
    assert "9808" in [str(port) for port in services["worker"]["expose"]]
    assert services["worker"]["depends_on"]["redis"]["condition"] == "service_healthy"


# -- redis ----------------------------------------------------------------------------------


def test_redis_is_configured_for_queues(compose: dict[str, Any], services: dict[str, Any]) -> None:
    redis = services["redis"]
    assert str(redis["image"]).startswith("redis:7")
    args = command_tokens(redis)
    assert args[0] == "redis-server"
    options = dict(zip(args[1::2], args[2::2], strict=True))
    assert options["--appendonly"] == "yes"
    assert options["--appendfsync"] == "everysec"
    assert options["--maxmemory-policy"] == "noeviction"
    volume, _, target = redis["volumes"][0].partition(":")
    assert target == "/data" and volume in compose["volumes"]


def test_redis_requires_the_password_of_the_env_file(services: dict[str, Any]) -> None:
    redis = services["redis"]
    args = command_tokens(redis)
    requirepass = args[args.index("--requirepass") + 1]
    assert requirepass.startswith("${REDIS_PASSWORD:?")  # no default: compose refuses
    # The healthcheck authenticates through the environment, not its command line.
    assert redis["environment"]["REDISCLI_AUTH"] == requirepass
    assert "REDIS_PASSWORD" not in " ".join(redis["healthcheck"]["test"])
    assert "grep -q PONG" in redis["healthcheck"]["test"][-1]  # NOAUTH also exits 0
    others = {"SCALEV_API_BASE_URL": "https://api.scalev.com", "FLOWER_BASIC_AUTH": "a:b"}
    env = {**others, "REDIS_PASSWORD": PASSWORD}
    for name in ("worker", "beat", "flower"):
        url = resolved(services[name], env)["REDIS_URL"]
        assert url == f"redis://:{PASSWORD}@redis:6379/0", name
        with pytest.raises(LookupError, match="REDIS_PASSWORD"):
            resolved(services[name], others)
    assert interpolate(requirepass, env) == PASSWORD
    # What is committed holds no password: both env files leave it to the operator.
    for path in (SANDBOX_ENV, PRODUCTION_ENV):
        assert not read_env_file(path).get("REDIS_PASSWORD"), path
    assert not re.search(r"REDIS_PASSWORD[:=]-", COMPOSE.read_text())


# -- flower, beat, sandbox --------------------------------------------------------------------


def test_flower_basic_auth_from_the_environment_and_persistent_state(
    compose: dict[str, Any], services: dict[str, Any]
) -> None:
    flower = services["flower"]
    assert flower["environment"]["FLOWER_BASIC_AUTH"].startswith("${FLOWER_BASIC_AUTH:?")
    tokens = command_tokens(flower)
    assert not any("basic_auth" in token or "basic-auth" in token for token in tokens)
    assert "--persistent=True" in tokens
    db = next(token.split("=", 1)[1] for token in tokens if token.startswith("--db="))
    volume, _, target = flower["volumes"][0].partition(":")
    assert volume in compose["volumes"] and db.startswith(target + "/")
    assert "FLOWER_BASIC_AUTH" not in services["worker"]["environment"]


def test_beat_keeps_its_schedule_on_a_volume(
    compose: dict[str, Any], services: dict[str, Any]
) -> None:
    beat = services["beat"]
    tokens = command_tokens(beat)
    schedule = tokens[tokens.index("--schedule") + 1]
    volume, _, target = beat["volumes"][0].partition(":")
    assert volume in compose["volumes"] and schedule.startswith(target + "/")
    assert target == STATE_DIR == beat["environment"]["SNACKVIDEO_STATE_DIR"]


def test_sandbox_only_with_its_profile_and_without_keys(services: dict[str, Any]) -> None:
    sandbox = services["sandbox"]
    assert sandbox["profiles"] == ["sandbox"]
    assert command_tokens(sandbox)[:4] == ["snackvideo", "sandbox", "--host", "0.0.0.0"]
    assert not any(name.startswith("SCALEV_") for name in sandbox["environment"])


def test_storefront_keys_reach_the_worker_only(services: dict[str, Any]) -> None:
    for name, service in services.items():
        has_keys = any(v.startswith("SCALEV_STOREFRONT") for v in service.get("environment", {}))
        assert has_keys == (name == "worker"), name
    assert not re.search(r"pk_(live|test)_", COMPOSE.read_text())


def test_the_ingest_service_reads_its_settings_and_publishes_on_loopback(
    services: dict[str, Any],
) -> None:
    ingest = services["ingest"]
    variables = {IngestSettings.variable_of(field) for field in IngestSettings.model_fields}
    missing = variables - set(ingest["environment"])
    assert not missing, f"add to docker-compose.yml's ingest environment: {sorted(missing)}"
    env = {**read_env_file(SANDBOX_ENV), "REDIS_PASSWORD": PASSWORD}  # from the shell
    settings = IngestSettings.from_env(resolved(ingest, env))
    assert settings.redis_url == f"redis://:{PASSWORD}@redis:6379/0"
    assert (settings.ingest_address, settings.ingest_port) == ("0.0.0.0", 8088)
    assert set(settings.ingest_tokens) == {"demo"}
    port = "${SNACKVIDEO_INGEST_PORT:-8088}"
    assert ingest["ports"] == [f"127.0.0.1:{port}:{port}"]
    # No token: compose refuses to start rather than serve an API that refuses everyone.
    with pytest.raises(LookupError, match="SNACKVIDEO_INGEST_TOKENS"):
        resolved(ingest, {"REDIS_PASSWORD": PASSWORD})
    production_env = {**read_env_file(PRODUCTION_ENV), "REDIS_PASSWORD": PASSWORD}
    production = IngestSettings.from_env(resolved(ingest, production_env))
    assert production.ingest_tokens["shop-backend"].stores == {"store_abc"}


# -- pointing it somewhere: the two env files ---------------------------------------------------


def test_the_sandbox_env_file_runs_the_demo_end_to_end(services: dict[str, Any]) -> None:
    env = {**read_env_file(SANDBOX_ENV), "REDIS_PASSWORD": PASSWORD}  # from the shell
    assert env["COMPOSE_PROFILES"] == "sandbox"
    worker_env = resolved(services["worker"], env)
    sandbox_port = resolved(services["sandbox"], env)["SANDBOX_PORT"]
    assert worker_env["SCALEV_API_BASE_URL"] == f"http://sandbox:{sandbox_port}"
    # Plain http to a host that is not loopback: refused unless the profile opts in.
    without_opt_in = {**worker_env, "SNACKVIDEO_ALLOW_INSECURE_HTTP": ""}
    with pytest.raises(ValueError, match="SNACKVIDEO_ALLOW_INSECURE_HTTP"):
        Settings.from_env(without_opt_in)
    settings = Settings.from_env(worker_env)  # empty values fall back to the defaults
    assert settings.allow_insecure_http
    assert settings.redis_url == f"redis://:{PASSWORD}@redis:6379/0"
    assert settings.api_key_for("demo_store") == DEFAULT_STORES["demo_store"]
    assert settings.metrics_port == 9808
    command = interpolate(services["worker"]["command"], env)
    assert f"--concurrency {env['WORKER_CONCURRENCY']}" in command


def test_production_points_at_scalev_without_the_sandbox(services: dict[str, Any]) -> None:
    env = {**read_env_file(PRODUCTION_ENV), "REDIS_PASSWORD": PASSWORD}  # filled in
    assert "COMPOSE_PROFILES" not in env
    worker_env = resolved(services["worker"], env)
    assert worker_env["SCALEV_API_BASE_URL"] == "https://api.scalev.com"
    assert not Settings.from_env(worker_env).allow_insecure_http
    # Nothing set: compose refuses to start rather than guess where events go.
    with pytest.raises(LookupError, match="SCALEV_API_BASE_URL"):
        resolved(services["worker"], {"REDIS_PASSWORD": PASSWORD})
    assert "deploy/production.env" in (ROOT / ".gitignore").read_text().split()


# -- the observability profile ----------------------------------------------------------------

PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
GRAFANA_DIR = ROOT / "deploy" / "grafana"


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> host path (``./...``) of a service's bind mounts."""
    found = {}
    for volume in service["volumes"]:
        source, target, *_ = volume.split(":")
        if source.startswith("./"):
            found[target] = source
    return found


def test_prometheus_and_grafana_only_with_the_observability_profile(
    services: dict[str, Any],
) -> None:
    for name in ("prometheus", "grafana"):
        service = services[name]
        assert service["profiles"] == ["observability"], name
        # Published on loopback only, like Flower.
        assert all(str(port).startswith("127.0.0.1:") for port in service["ports"]), name
        assert not any(
            key.startswith(("SCALEV_", "SNACKVIDEO_")) for key in service.get("environment", {})
        )
    assert all("profiles" not in services[n] for n in ("redis", "worker", "beat", "flower"))


def test_prometheus_loads_the_kit_and_scrapes_the_worker_service(
    compose: dict[str, Any], services: dict[str, Any]
) -> None:
    prometheus = services["prometheus"]
    tokens = command_tokens(prometheus)
    config_file = next(t.split("=", 1)[1] for t in tokens if t.startswith("--config.file="))
    config_dir, _, config_name = config_file.rpartition("/")
    assert mounts(prometheus)[config_dir] == "./deploy/prometheus"
    config = yaml.safe_load((PROMETHEUS_DIR / config_name).read_text())
    for rule_file in config["rule_files"]:
        assert (PROMETHEUS_DIR / rule_file).is_file()
    (job,) = config["scrape_configs"]
    (discovery,) = job["dns_sd_configs"]
    assert discovery["names"] == ["worker"] and discovery["type"] == "A"
    assert str(discovery["port"]) in [str(port) for port in services["worker"]["expose"]]
    data = next(v for v in prometheus["volumes"] if not v.startswith("./"))
    assert data.partition(":")[0] in compose["volumes"]


def test_grafana_is_provisioned_with_the_datasource_and_the_dashboard(
    compose: dict[str, Any], services: dict[str, Any]
) -> None:
    grafana = services["grafana"]
    bound = mounts(grafana)
    assert bound["/etc/grafana/provisioning"] == "./deploy/grafana/provisioning"
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert bound[home] == "./deploy/grafana/snackvideo-dashboard.json"
    datasources = yaml.safe_load(
        (GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )
    (source,) = datasources["datasources"]
    published = services["prometheus"]["ports"][0].rsplit(":", 1)[1]
    assert source["url"] == f"http://prometheus:{published}"
    assert grafana["depends_on"] == ["prometheus"]
    # No password in the file itself: it comes from the env file (Grafana's default else).
    assert grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD"].startswith(
        "${GRAFANA_ADMIN_PASSWORD"
    )
    data = next(v for v in grafana["volumes"] if not v.startswith("./"))
    assert data.partition(":")[0] in compose["volumes"]
