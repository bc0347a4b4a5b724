"""deploy/prometheus/ loads in Prometheus: promtool checks the rules and the config and
runs the rules' unit tests, in which every alert both fires and stays quiet.

promtool comes from Debian's ``prometheus`` package (.ci/run installs it when missing);
without it these tests skip locally and fail in CI, like the Redis tests.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT

PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
ALERTS = PROMETHEUS_DIR / "alerts.yml"
ALERT_TESTS = PROMETHEUS_DIR / "alerts.test.yml"
CONFIG = PROMETHEUS_DIR / "prometheus.yml"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("no promtool on PATH: .ci/run installs Debian's prometheus package")
        pytest.skip("no promtool (apt-get install prometheus)")
    return subprocess.run(
        [binary, *args], cwd=PROMETHEUS_DIR, capture_output=True, text=True, timeout=120
    )


def load(path: Any) -> dict[str, Any]:
    return dict(yaml.safe_load(path.read_text()))


def alert_names() -> list[str]:
    return [rule["alert"] for group in load(ALERTS)["groups"] for rule in group["rules"]]


def test_promtool_accepts_the_rules() -> None:
    result = promtool("check", "rules", ALERTS.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_names())} rules found" in result.stdout


def test_promtool_accepts_the_config_and_the_rule_file_it_loads() -> None:
    result = promtool("check", "config", CONFIG.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert load(CONFIG)["rule_files"] == [ALERTS.name]


def test_the_alert_unit_tests_pass() -> None:
    result = promtool("test", "rules", ALERT_TESTS.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    cases = [case for test in load(ALERT_TESTS)["tests"] for case in test["alert_rule_test"]]
    fired = {case["alertname"] for case in cases if case["exp_alerts"]}
    quiet = {case["alertname"] for case in cases if not case["exp_alerts"]}
    names = set(alert_names())
    assert names - fired == set(), "alerts never tested firing"
    assert names - quiet == set(), "alerts never tested staying quiet"
    assert (fired | quiet) <= names, "tests of alerts that do not exist"


def test_the_scrape_job_is_the_one_the_alerts_name() -> None:
    jobs = {job["job_name"] for job in load(CONFIG)["scrape_configs"]}
    named = set(re.findall(r'job="([^"]+)"', ALERTS.read_text()))
    assert named and named <= jobs


def test_the_operations_guide_points_to_the_rule_file_instead_of_a_copy() -> None:
    guide = (ROOT / "docs" / "operations.md").read_text()
    assert "deploy/prometheus/alerts.yml" in guide
    assert "- alert:" not in guide, "the rules live in deploy/prometheus/alerts.yml only"
