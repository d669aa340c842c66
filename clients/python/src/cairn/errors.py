"""Exceptions raised by the cairn client."""

from __future__ import annotations

from typing import Any, Dict, List, Optional


class CairnError(Exception):
    """Base class of every error this package raises."""


class ApiError(CairnError):
    """The server refused a request: its `{"error": {"code", "message"}}` body and HTTP status.

    `code` is stable (snake_case, e.g. `plan_not_found`, `conflict`); match on it, not on the
    message. A refused intervention carries its audit record in `intervention`; an invalid plan
    carries every fault in `faults`.
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        body: Optional[Dict[str, Any]] = None,
        method: str = "",
        path: str = "",
    ) -> None:
        super().__init__(f"{code} ({status}): {message}")
        self.status = status
        self.code = code
        self.message = message
        self.body: Dict[str, Any] = body or {}
        self.method = method
        self.path = path

    @property
    def detail(self) -> Dict[str, Any]:
        detail = self.body.get("error")
        return detail if isinstance(detail, dict) else {}

    @property
    def intervention(self) -> Optional[Dict[str, Any]]:
        """A refused intervention's record, as stored in the audit trail."""
        value = self.detail.get("intervention")
        return value if isinstance(value, dict) else None

    @property
    def faults(self) -> List[Dict[str, Any]]:
        """`invalid_plan`: every fault of the plan, each with its path."""
        value = self.detail.get("faults")
        return value if isinstance(value, list) else []


class BadRequestError(ApiError):
    """400: the request could not be read."""


class AuthenticationError(ApiError):
    """401: no token, or a token the server does not accept."""


class PermissionDeniedError(ApiError):
    """403: the token's role may not do this."""


class NotFoundError(ApiError):
    """404: no such plan, checkpoint, step, task, template or token."""


class ConflictError(ApiError):
    """409: the request does not fit the current state (a refused intervention, a pause of a
    plan that is not running, an `expected_version` that does not match, …)."""


class UnprocessableError(ApiError):
    """422: the request is well-formed JSON but its content is invalid (an invalid plan, …)."""


class RateLimitedError(ApiError):
    """429: too many requests."""


class UnavailableError(ApiError):
    """503: the server cannot write (`storage_unavailable`) or is shutting down."""


_BY_STATUS = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    422: UnprocessableError,
    429: RateLimitedError,
    503: UnavailableError,
}


def api_error(
    status: int, body: Any, text: str, *, method: str = "", path: str = ""
) -> ApiError:
    """The exception for an error answer: its JSON error body when it has one."""
    code, message = "http_error", text.strip() or f"HTTP {status}"
    detail = body.get("error") if isinstance(body, dict) else None
    if isinstance(detail, dict):
        code = str(detail.get("code") or code)
        message = str(detail.get("message") or message)
    cls = _BY_STATUS.get(status, ApiError)
    return cls(
        status,
        code,
        message,
        body=body if isinstance(body, dict) else None,
        method=method,
        path=path,
    )


class TransportError(CairnError):
    """The server could not be reached, or the connection broke before an answer (after the
    retries that were safe to make)."""


class StepFailed(Exception):
    """Raise from an executor to fail a step's attempt with a message of your own; with
    `retryable=False` the step's retry policy does not try again."""

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable
