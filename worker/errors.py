"""What can go wrong while delivering a job.

    DispatchError (producers.errors)
    ├── InvalidEvent, EnqueueError      producer side, see producers.errors
    └── DeliveryError                   one delivery attempt did not end in a 2xx
        ├── RetryableError              may heal on its own: 408, 409, 425, 5xx, timeout,
        │                               connection, a request cut at its deadline
        ├── PermanentError              will fail the same way again: 400, 401, 403, 404,
        │                               other 4xx
        │   └── RedirectRefused         any 3xx: never followed (it would carry the key elsewhere)
        └── RateLimited                 429: wait for the advertised reset; spends no attempt
    DeadLettered                        ends the Celery task in FAILURE once the job is parked

``DeadLettered`` is the exception Flower shows under failed tasks: its message holds the
reason, the status code and the click_id, never an API key.
"""

from __future__ import annotations

from urllib.parse import quote

from producers.errors import DispatchError
from worker.escaping import log_field


class DeliveryError(DispatchError):
    """Raised when one delivery attempt did not end in a 2xx response."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        body: str = "",
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.body = body
        self.headers = headers or {}


class RetryableError(DeliveryError):
    """Raised when Scalev answered 408, 409, 425 or 5xx, timed out, or could not be reached."""


class PermanentError(DeliveryError):
    """Raised when Scalev refused the event in a way a retry cannot change (4xx)."""


class RedirectRefused(PermanentError):
    """Raised when Scalev answered 3xx. Following it would re-send the event, and the
    storefront key header with it, to wherever ``Location`` points (requests strips only
    ``Authorization`` across hosts), or turn the POST into a bodiless GET that a 200 would
    report as delivered. ``location`` is kept for the dead-letter entry."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        body: str = "",
        headers: dict[str, str] | None = None,
        location: str | None = None,
    ) -> None:
        super().__init__(message, status_code=status_code, body=body, headers=headers)
        self.location = location


class RateLimited(DeliveryError):
    """Raised when Scalev answered 429; a control-flow signal, not logged as an error."""


#: Where Flower's process serves one dead-letter entry (``worker.flower_pages``), below
#: Flower's ``--url_prefix`` when it has one.
DEAD_LETTER_PAGE = "/dead-letters/"


def dead_letter_path(entry_id: str) -> str:
    """The path of an entry's page: what a failed task in Flower carries to lead there."""
    return DEAD_LETTER_PAGE + quote(entry_id, safe="")


class DeadLettered(DispatchError):
    """Raised to end the task in FAILURE after the job was stored in the dead-letter queue."""

    def __init__(
        self,
        reason: str,
        status_code: int | None,
        click_id: str | None,
        job_id: str,
        entry_id: str = "",
    ):
        self.reason = reason
        self.status_code = status_code
        self.click_id = click_id
        self.job_id = job_id
        self.entry_id = entry_id
        # The ids came from outside: Celery logs this text and Flower shows it. The entry's
        # path, last, so that an operator reading the failed task finds its page.
        entry = f" entry={dead_letter_path(entry_id)}" if entry_id else ""
        super().__init__(
            f"dead-lettered: reason={reason} status={status_code if status_code else '-'} "
            f"click_id={log_field(click_id or '-')} job_id={log_field(job_id)}{entry}"
        )

    def __reduce__(self) -> tuple[type, tuple[str, int | None, str | None, str, str]]:
        # The pool sends exceptions between processes by pickle.
        return (
            type(self),
            (self.reason, self.status_code, self.click_id, self.job_id, self.entry_id),
        )
