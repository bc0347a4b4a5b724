"""The HTTP ingest service: backends in any language enqueue events over HTTP.

``snackvideo ingest`` serves ``create_app()`` with uvicorn. A 202 means what a returned
``producers.enqueue`` means: the job is in Redis. Imports ``producers``, never ``worker``.
"""

from ingest.app import create_app
from ingest.settings import IngestSettings, IngestToken

__all__ = ["IngestSettings", "IngestToken", "create_app"]
