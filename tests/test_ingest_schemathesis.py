"""schemathesis against the live service's own /openapi.json: no generated request gets a
5xx, every response conforms to the document, and requests that break it are refused.

Bounded: a fixed seed and a few dozen examples per operation (about 20 s on 2 cores).
``positive_data_acceptance`` is left out: the models refuse what a JSON schema cannot say
(a relative URL in ``event_source_url``), and such a request gets a documented 422.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import IngestProcess
from tests.ingest_helpers import SECRET, TOKENS

pytestmark = pytest.mark.integration

CHECKS = [
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "negative_data_rejection",
    "missing_required_header",
    "unsupported_method",
    "ignored_auth",
]


@pytest.mark.timeout(300)  # a loaded CI machine: the run itself is bounded by examples
def test_the_api_conforms_to_its_own_openapi(
    redis_url: str, start_ingest: Callable[..., IngestProcess], tmp_path: Path
) -> None:
    service = start_ingest(redis_url, SNACKVIDEO_INGEST_TOKENS=TOKENS)
    st = Path(sys.executable).with_name("st")
    done = subprocess.run(
        [str(st), "run", f"{service.url}/openapi.json",
         "-H", f"Authorization: Bearer {SECRET}",
         "--checks", ",".join(CHECKS),
         "--max-examples", "40", "--seed", "15", "--workers", "1",
         "--request-timeout", "30", "--report-dir", str(tmp_path / "report")],
        cwd=tmp_path, capture_output=True, text=True, timeout=280,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert "No issues found" in done.stdout
