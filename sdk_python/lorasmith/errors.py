"""Typed errors, one per way a call can fail, each carrying the server's own message."""

from __future__ import annotations

from typing import Any


class LorasmithError(Exception):
    """Base class of every error this SDK raises.

    Errors pickle (e.g. to cross a multiprocessing boundary) with their message and attributes:
    unpickling rebuilds the instance from its `args` and `__dict__` without calling `__init__`,
    so subclasses may take whatever constructor arguments they need.
    """

    def __reduce__(self) -> tuple[Any, ...]:
        return _rebuild, (type(self), self.args, self.__dict__)


class APIError(LorasmithError):
    """The server answered with an error status; `field` names the request field at fault, if any."""

    status_code: int = 0
    retry_after: float | None = None  # seconds, from the server's retry-after header
    consumed_seq_id: int | None = None  # a refused training request that still used up its seq_id

    def __init__(self, message: str, status_code: int | None = None, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field
        if status_code is not None:
            self.status_code = status_code


APIStatusError = APIError  # Tinker's (Stainless) name for "the server answered with an error status"


class BadRequestError(APIError):
    status_code = 400


class UnprocessableEntityError(BadRequestError):
    status_code = 422


class AuthenticationError(APIError):
    status_code = 401


class PermissionDeniedError(APIError):
    status_code = 403


class NotFoundError(APIError):
    status_code = 404


class ConflictError(APIError):
    status_code = 409


class RequestTooLargeError(APIError):
    status_code = 413


class RateLimitError(APIError):
    status_code = 429


class InternalServerError(APIError):
    status_code = 500


class APIConnectionError(LorasmithError):
    """The server could not be reached (after retries)."""


class APITimeoutError(APIConnectionError):
    """A request timed out (after retries)."""


class RequestFailedError(LorasmithError):
    """The server accepted the request but could not carry it out."""

    def __init__(self, message: str, request_id: str, category: str):
        super().__init__(f"{message} (request {request_id}, category {category})")
        self.message = message
        self.request_id = request_id
        self.category = category


STATUS_ERRORS = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    410: NotFoundError,
    413: RequestTooLargeError,
    422: UnprocessableEntityError,
    429: RateLimitError,
}


def _rebuild(kind: type[LorasmithError], args: tuple, attributes: dict) -> LorasmithError:
    error = kind.__new__(kind, *args)
    error.__dict__.update(attributes)
    return error


def error_for_status(status: int, message: str, field: str | None = None) -> APIError:
    kind = STATUS_ERRORS.get(status, InternalServerError if status >= 500 else APIError)
    return kind(message, status_code=status, field=field)
