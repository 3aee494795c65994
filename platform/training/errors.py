"""Errors a request can end in; `api.errors` maps them to HTTP in one place."""

from __future__ import annotations


class ApiError(Exception):
    status = 400
    consumed_seq_id: int | None = None  # set when a rejected training request still used up its seq_id

    def __init__(self, message: str, field: str = ""):
        super().__init__(message)
        self.message = message
        self.field = field


class BadRequest(ApiError):
    status = 400


class NotFound(ApiError):
    """Also used for other users' resources, so nothing about them leaks."""

    status = 404


class Gone(ApiError):
    status = 410


class TooLarge(ApiError):
    status = 413


class UnsupportedMediaType(ApiError):
    status = 415


class RateLimited(ApiError):
    """Over a per-user quota: nothing was stored, so the same request (same seq_id) may be sent
    again after `retry_after_seconds`."""

    status = 429

    def __init__(self, message: str, field: str, retry_after_seconds: float):
        super().__init__(message, field)
        self.retry_after_seconds = retry_after_seconds
