"""Errors in OpenAI's shape, {"error": {"message", "type", "param", "code"}}, with the status codes
the `openai` client turns into AuthenticationError (401), NotFoundError (404), BadRequestError
(400), RateLimitError (429, with Retry-After)."""

from __future__ import annotations

import math

from django.http import JsonResponse

from training.errors import ApiError

TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    410: "not_found_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}

# the intake names the fields of a Tinker sample request; the caller wrote OpenAI's
PARAM_OF_FIELD = {
    "num_samples": "n",
    "sampling_params.max_tokens": "max_tokens",
    "sampling_params.temperature": "temperature",
    "sampling_params.top_p": "top_p",
    "sampling_params.stop": "stop",
    "sampling_params.seed": "seed",
    "sampling_session_id": "model",
    "checkpoint_id": "model",
    "model_path": "model",
    "body": None,
}


class OaiError(Exception):
    """A refusal decided in this package (before or outside the intake)."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.retry_after_seconds: float | None = None


def from_api_error(error: ApiError, prompt_param: str = "prompt") -> OaiError:
    """The intake's refusal, its field named as the caller's parameter."""
    field = error.field or None
    if field is not None:
        field = PARAM_OF_FIELD.get(field, field)
        if field == "prompt":
            field = prompt_param
    code = "model_not_found" if error.status == 404 and field == "model" else None
    oai = OaiError(error.status, error.message, field, code)
    oai.retry_after_seconds = getattr(error, "retry_after_seconds", None)
    return oai


def body(error: OaiError) -> dict:
    kind = TYPES.get(error.status, "server_error" if error.status >= 500 else "invalid_request_error")
    return {"error": {"message": error.message, "type": kind, "param": error.param, "code": error.code}}


def response(error: OaiError) -> JsonResponse:
    answer = JsonResponse(body(error), status=error.status)
    if error.retry_after_seconds is not None:
        answer["Retry-After"] = str(math.ceil(error.retry_after_seconds))
        answer["retry-after-ms"] = str(math.ceil(error.retry_after_seconds * 1000))
    return answer
