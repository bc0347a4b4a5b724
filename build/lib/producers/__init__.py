"""Everything a backend needs to enqueue SnackVideo events. Never imports ``worker``."""

from producers.enqueue import Enqueued, Producer, enqueue, enqueue_many
from producers.errors import ConfigurationError, DispatchError, EnqueueError, InvalidEvent
from producers.models import validate_payload

__all__ = [
    "ConfigurationError",
    "DispatchError",
    "Enqueued",
    "EnqueueError",
    "InvalidEvent",
    "Producer",
    "enqueue",
    "enqueue_many",
    "validate_payload",
]
