"""The one place where errors become HTTP answers. Every 4xx carries a JSON body naming the field.

Under /api/ every answer is JSON, also those Django gives before or outside a DRF view (an unmatched
route, a refused request, a crash): `not_found` catches unmatched /api/ routes, and the root
URLconf's handler400/404/500 answer JSON there; elsewhere (admin, pages) Django's pages stay.
"""

from __future__ import annotations

import math

from django.core.exceptions import RequestDataTooBig, SuspiciousOperation
from django.http import JsonResponse
from django.views import defaults
from django.views.decorators.csrf import csrf_exempt
from rest_framework import exceptions
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_handler

from training.errors import ApiError


def error_body(message: str, field: str = "", consumed_seq_id: int | None = None) -> dict:
    body: dict[str, object] = {"error": message, "detail": message}
    if field:
        body["field"] = field
    if consumed_seq_id is not None:
        body["consumed_seq_id"] = consumed_seq_id
    return body


def _api_error_response(exc: ApiError, response_class):
    body = error_body(exc.message, exc.field, exc.consumed_seq_id)
    retry_after = getattr(exc, "retry_after_seconds", None)
    if retry_after is not None:
        body["retry_after_seconds"] = retry_after
    response = response_class(body, status=exc.status)
    if retry_after is not None:
        # whole seconds for HTTP; milliseconds for clients that read the finer header (Tinker's SDK does)
        response["Retry-After"] = str(math.ceil(retry_after))
        response["retry-after-ms"] = str(math.ceil(retry_after * 1000))
    return response


def exception_handler(exc, context):
    if isinstance(exc, ApiError):
        return _api_error_response(exc, Response)
    if isinstance(exc, exceptions.ParseError):
        return Response(error_body(f"request body is not valid JSON: {exc.detail}", "body"), status=400)
    if isinstance(exc, SuspiciousOperation):  # e.g. too many query parameters (DATA_UPLOAD_MAX_NUMBER_FIELDS)
        return Response(*_suspicious(exc))
    response = drf_handler(exc, context)
    if response is not None:
        detail = response.data.get("detail", response.data) if isinstance(response.data, dict) else response.data
        response.data = error_body(str(detail))
    return response


def json_error(exc: ApiError) -> JsonResponse:
    return _api_error_response(exc, JsonResponse)


def _suspicious(exc: SuspiciousOperation) -> tuple[dict, int]:
    if isinstance(exc, RequestDataTooBig):
        return error_body("request body is too large", "body"), 413
    return error_body(f"bad request: {exc}"), 400


def _is_api(request) -> bool:
    return request.path.startswith("/api/")


@csrf_exempt  # any method: an unmatched POST is a 404 too, not a CSRF failure
def not_found(request, *args, **kwargs) -> JsonResponse:
    """The last /api/ route: what matches no endpoint."""
    return JsonResponse(error_body(f"no endpoint {request.method} {request.path}", "path"), status=404)


def bad_request(request, exception):
    if not _is_api(request):
        return defaults.bad_request(request, exception)
    body, status = (
        _suspicious(exception) if isinstance(exception, SuspiciousOperation) else (error_body("bad request"), 400)
    )
    return JsonResponse(body, status=status)


def page_not_found(request, exception):
    if not _is_api(request):
        return defaults.page_not_found(request, exception)
    return not_found(request)


def server_error(request):
    if not _is_api(request):
        return defaults.server_error(request)
    return JsonResponse(error_body("internal server error"), status=500)
