"""The HTTP ingest service: backends in any language enqueue events over HTTP.

``snackvideo ingest`` (``ingest.server``) serves ``ingest.app.create_app()`` with uvicorn.
A 202 means what a returned ``producers.enqueue`` means: the job is in Redis. Imports
``producers``, never ``worker``. No imports here: importing one module of the package
never imports its siblings.
"""
