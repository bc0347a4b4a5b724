"""The Celery worker side of snackvideo-dispatch: ``celery -A worker worker``."""

from worker.app import app

__all__ = ["app"]
