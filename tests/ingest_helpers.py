"""What the ingest tests share: tokens and settings (the process: ``start_ingest`` in conftest)."""

from __future__ import annotations

import json

from ingest.settings import IngestSettings
from tests.conftest import STORE

SECRET = "ingest-test-secret-5b0c2e91"
LIMITED_SECRET = "ingest-limited-secret-77d3a4f0"
OTHER_STORE = "store_other"
#: A token for every store ("ci") and one limited to STORE ("shop").
TOKENS = json.dumps({"ci": SECRET, "shop": {"secret": LIMITED_SECRET, "stores": [STORE]}})
AUTH = {"Authorization": f"Bearer {SECRET}"}
LIMITED_AUTH = {"Authorization": f"Bearer {LIMITED_SECRET}"}


def ingest_settings(redis_url: str, **variables: str) -> IngestSettings:
    return IngestSettings.from_env(
        {"REDIS_URL": redis_url, "SNACKVIDEO_INGEST_TOKENS": TOKENS, **variables}
    )
