"""The one place where errors become HTTP answers. Every 4xx carries a JSON body naming the field."""

from __future__ import annotations

import math

from django.http import JsonResponse
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
        response["Retry-After"] = str(math.ceil(retry_after))
    return response


def exception_handler(exc, context):
    if isinstance(exc, ApiError):
        return _api_error_response(exc, Response)
    if isinstance(exc, exceptions.ParseError):
        return Response(error_body(f"request body is not valid JSON: {exc.detail}", "body"), status=400)
    response = drf_handler(exc, context)
    if response is not None:
        detail = response.data.get("detail", response.data) if isinstance(response.data, dict) else response.data
        response.data = error_body(str(detail))
    return response


def json_error(exc: ApiError) -> JsonResponse:
    return _api_error_response(exc, JsonResponse)
