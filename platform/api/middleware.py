"""A request that cannot get a database connection in time (the pool is exhausted, or the
database refuses more clients) answers 503 with Retry-After and a JSON body: a client should wait
and retry, and the log holds one line, not a traceback per request."""

from __future__ import annotations

import logging

from django.db import OperationalError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils.deprecation import MiddlewareMixin

from .errors import error_body

log = logging.getLogger(__name__)
RETRY_AFTER_SECONDS = 1
BUSY_MARKERS = ("couldn't get a connection", "too many clients", "remaining connection slots")


def database_busy(error: BaseException) -> bool:
    """Whether `error` (or what caused it) says no database connection could be had."""
    while error is not None:
        if type(error).__name__ == "PoolTimeout" or any(m in str(error) for m in BUSY_MARKERS):
            return True
        error = error.__cause__ or error.__context__  # type: ignore[assignment]
    return False


def busy_response() -> JsonResponse:
    response = JsonResponse(
        error_body("the service is busy: no database connection was free in time; retry shortly"), status=503
    )
    response["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response


class DatabaseBusyMiddleware(MiddlewareMixin):
    """MiddlewareMixin keeps it async-capable, so async views (the long-poll) stay async."""

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if isinstance(exception, OperationalError) and database_busy(exception):
            log.warning("503 for %s %s: no database connection free in time", request.method, request.path)
            return busy_response()
        return None
