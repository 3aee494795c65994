"""The /oai/api/v1 views. Async, so a call waiting for its sample holds no worker thread and no
database connection; the checks and the submission run in one sync step through the intake.

Streaming is at cycle granularity: the role chunk goes out as soon as the request is accepted,
the tokens (one chunk each) once the cycle that sampled them has finished; keep-alive comments
are sent while it waits."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from asgiref.sync import sync_to_async
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt

from accounts.services import user_for_key
from training import base_models
from training.errors import ApiError
from training.intake import sampling_requests, served_models
from training.models import Operation

from . import errors, request_params, shapes, text
from .errors import OaiError
from .request_params import SampleCall
from .waiting import OperationWatch, release_connection

COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /completions; chat fills the context
RESULT_DEADLINE_SECONDS = 600.0  # the openai client's own default timeout
KEEPALIVE_SECONDS = 10.0


@dataclass
class Submitted:
    """An accepted call: its sample request and what answering it needs."""

    user: object
    op_id: str
    call: SampleCall
    chat: bool
    base_model: str
    prompt_tokens: int
    stops: list[str]
    meta: dict  # id, created, model: the same in the answer and in every chunk


def _authenticated(request: HttpRequest):
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    key = token.strip() if scheme.lower() == "bearer" else request.headers.get("X-API-Key")
    user = user_for_key(key or None)
    if user is None:
        raise OaiError(
            401,
            "missing, invalid or revoked API key (Authorization: Bearer tml-… or X-API-Key)",
            None,
            "invalid_api_key",
        )
    return user


def _json_body(request: HttpRequest) -> dict:
    try:
        raw = request.body
    except RequestDataTooBig:
        raise OaiError(413, "request body is too large") from None
    try:
        body = json.loads(raw or b"null")
    except (ValueError, UnicodeDecodeError) as error:
        raise OaiError(400, f"request body is not valid JSON: {error}") from None
    if not isinstance(body, dict):
        raise OaiError(400, "request body must be a JSON object")
    return body


def _submit(request: HttpRequest, chat: bool) -> Submitted:
    """Authenticate, check, resolve the model and queue the sample request (sync: the intake)."""
    try:
        user = _authenticated(request)
        call = request_params.parse(_json_body(request), chat)
        served = served_models.resolve(user, call.model)
        words = text.tokenizer(served.base_model)
        if chat:
            prompt, stops = text.render_chat(words, call.messages)
        else:
            assert call.prompt is not None
            prompt, stops = text.encode_prompt(words, call.prompt), []
        max_tokens = call.max_tokens or (
            max(1, base_models.info(served.base_model).max_context - len(prompt))
            if chat
            else COMPLETIONS_DEFAULT_MAX_TOKENS
        )
        sampler = served_models.sampler_for(user, served)
        params = call.sampling_params(max_tokens, stops)
        op = served_models.submit(user, sampler, prompt, call.n, params, call.topk_sample_logprobs)
    except ApiError as error:
        raise errors.from_api_error(error, "messages" if chat else "prompt") from None
    finally:
        release_connection()
    prefix = "chatcmpl" if chat else "cmpl"
    meta = {"id": f"{prefix}-{op.id}", "created": int(time.time()), "model": call.model, "system_fingerprint": None}
    return Submitted(user, op.id, call, chat, served.base_model, len(prompt), call.stop + stops, meta)


def _cancel(submitted: Submitted) -> None:
    try:
        sampling_requests.cancel_future(submitted.user, submitted.op_id)
    finally:
        release_connection()


def _outcome_error(op: Operation) -> OaiError | None:
    if op.status == Operation.Status.DONE:
        return None
    status = 400 if op.error_category == "user" else 500
    return OaiError(status, f"the sample request {op.status}: {op.error or 'no reason given'}", None, op.status)


def _sequences(submitted: Submitted, op: Operation) -> tuple[list[text.Visible], dict]:
    words = text.tokenizer(submitted.base_model)
    sequences = (op.result or {}).get("sequences", [])
    sampled = sum(len(s["tokens"]) for s in sequences)
    used = shapes.usage(submitted.prompt_tokens, sampled)
    top_k = submitted.call.top_logprobs
    return [text.visible(words, s, submitted.stops, top_k) for s in sequences], used


async def _wait(submitted: Submitted, timeout: float) -> Operation | None:
    async with OperationWatch(submitted.user.pk, submitted.op_id) as watch:  # type: ignore[attr-defined]
        return await watch.finished(timeout)


def _not_allowed(request: HttpRequest, method: str) -> JsonResponse:
    answer = errors.response(OaiError(405, f"method {request.method} not allowed; use {method}"))
    answer["Allow"] = method
    return answer


async def _sample_view(request: HttpRequest, chat: bool) -> HttpResponse | StreamingHttpResponse:
    if request.method != "POST":
        return _not_allowed(request, "POST")
    try:
        submitted = await sync_to_async(_submit)(request, chat)
    except OaiError as error:
        return errors.response(error)
    if submitted.call.stream:
        response = StreamingHttpResponse(_stream(submitted), content_type="text/event-stream")
        response["Cache-Control"] = "no-cache"
        response["X-Accel-Buffering"] = "no"
        return response
    try:
        op = await _wait(submitted, RESULT_DEADLINE_SECONDS)
    except asyncio.CancelledError:  # the client went away: a sample nobody waits for need not run
        await sync_to_async(_cancel)(submitted)
        raise
    if op is None:
        await sync_to_async(_cancel)(submitted)
        return errors.response(OaiError(504, "the sample request did not finish in time", None, "timeout"))
    failure = _outcome_error(op)
    if failure is not None:
        return errors.response(failure)
    sequences, used = _sequences(submitted, op)
    call = submitted.call
    if chat:
        return JsonResponse(shapes.chat_completion(submitted.meta, sequences, call.logprobs, used))
    return JsonResponse(shapes.completion(submitted.meta, sequences, call.logprobs, used, call.top_logprobs > 0))


def _event(payload: dict) -> str:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n"


async def _stream(submitted: Submitted) -> AsyncIterator[str]:
    meta, call, finished = submitted.meta, submitted.call, False
    try:
        if submitted.chat:
            opening = [shapes.chat_delta(i, {"role": "assistant", "content": ""}) for i in range(call.n)]
            yield _event(shapes.chat_chunk(meta, opening))
        op = None
        deadline = time.monotonic() + RESULT_DEADLINE_SECONDS
        async with OperationWatch(submitted.user.pk, submitted.op_id) as watch:  # type: ignore[attr-defined]
            while op is None and time.monotonic() < deadline:
                op = await watch.finished(min(KEEPALIVE_SECONDS, max(0.0, deadline - time.monotonic())))
                if op is None:
                    yield ": keep-alive\n\n"
        if op is None:
            yield _event(errors.body(OaiError(504, "the sample request did not finish in time", None, "timeout")))
            return
        finished = True
        failure = _outcome_error(op)
        if failure is not None:
            yield _event(errors.body(failure))
            return
        sequences, used = _sequences(submitted, op)
        for event in _token_chunks(submitted, sequences):
            yield _event(event)
        if call.include_usage:
            chunk = shapes.chat_chunk if submitted.chat else shapes.completion_chunk
            yield _event(chunk(meta, [], used))
        yield "data: [DONE]\n\n"
    finally:
        if not finished:  # the client went away, or the deadline passed: cancel it if still queued
            await sync_to_async(_cancel)(submitted)


def _token_chunks(submitted: Submitted, sequences: list[text.Visible]) -> list[dict]:
    """One chunk per token of each choice, then one with its finish_reason."""
    meta, logprobs, chunks = submitted.meta, submitted.call.logprobs, []
    with_top = submitted.call.top_logprobs > 0
    for index, seq in enumerate(sequences):
        for at, piece in enumerate(seq.pieces):
            if submitted.chat:
                chat_lp = shapes.chat_logprobs(seq, at, at + 1) if logprobs else None
                chunks.append(shapes.chat_chunk(meta, [shapes.chat_delta(index, {"content": piece}, None, chat_lp)]))
            else:
                text_lp = shapes.completion_logprobs(seq, with_top, at, at + 1) if logprobs else None
                chunks.append(shapes.completion_chunk(meta, [shapes.completion_delta(index, piece, None, text_lp)]))
        if submitted.chat:
            chunks.append(shapes.chat_chunk(meta, [shapes.chat_delta(index, {}, seq.finish_reason)]))
        else:
            chunks.append(shapes.completion_chunk(meta, [shapes.completion_delta(index, "", seq.finish_reason)]))
    return chunks


@csrf_exempt
async def completions(request: HttpRequest) -> HttpResponse | StreamingHttpResponse:
    return await _sample_view(request, chat=False)


@csrf_exempt
async def chat_completions(request: HttpRequest) -> HttpResponse | StreamingHttpResponse:
    return await _sample_view(request, chat=True)


def _model_list(request: HttpRequest) -> dict:
    try:
        user = _authenticated(request)
        data = [shapes.model_entry(name, 0, "lorasmith", None) for name in base_models.served_models()]
        for checkpoint in served_models.listed_checkpoints(user):
            entry = shapes.model_entry(
                checkpoint.tinker_path,
                int(checkpoint.created_at.timestamp()),
                checkpoint.owner.username,
                checkpoint.training_run.base_model,
            )
            data.append({**entry, "name": checkpoint.name, "public": checkpoint.public})
        return {"object": "list", "data": data}
    finally:
        release_connection()


@csrf_exempt
async def models(request: HttpRequest) -> HttpResponse:
    if request.method != "GET":
        return _not_allowed(request, "GET")
    try:
        return JsonResponse(await sync_to_async(_model_list)(request))
    except OaiError as error:
        return errors.response(error)


@csrf_exempt
async def not_found(request: HttpRequest, *args, **kwargs) -> HttpResponse:
    return errors.response(OaiError(404, f"no endpoint {request.method} {request.path}", None, "unknown_url"))
