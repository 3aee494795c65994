"""`retrieve_future`: an async long-poll, so a waiting client holds no worker thread and, between its
polls, no database connection. In embedded mode it is woken by the push that its future finished
(the in-process Channels layer's `future.finished`, the WebSocket's source), so it answers as soon
as the row is written, not at its next look; it still looks at the row now and then, so a lost push
costs only time. A
finished forward/forward_backward or sample result is answered as protobuf when the client's Accept
asks for it (Tinker's SDK does, and reads those two only as protobuf), as JSON otherwise."""

from __future__ import annotations

import time
from typing import Any

from asgiref.sync import sync_to_async
from channels.layers import BaseChannelLayer, InMemoryChannelLayer, get_channel_layer
from django.conf import settings
from django.http import HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from accounts.services import user_for_key
from training import access, test_hooks
from training.errors import ApiError, BadRequest

from . import request_json, result_proto, serializers
from .errors import error_body, json_error
from .push_wait import PushWait, release_connection

POLL_INTERVAL = 0.05  # first re-check without a push; most cycles finish within a few of these
MAX_POLL_INTERVAL = 0.5  # later re-checks back off: many idle long-polls stay cheap


def _lookup(key: str | None, request) -> tuple[Any, str]:
    """Authenticates first, then reads the body: a request without a valid key is 401 whatever it sent."""
    user = user_for_key(key)
    if user is None:
        raise ApiError("missing, invalid or revoked API key (X-API-Key)", field="X-API-Key")
    body = request_json.parse_object(request_json.read_body(request))
    request_id = body.get("request_id")
    if not isinstance(request_id, str) or not request_id:
        raise BadRequest("request_id is required", field="request_id")
    access.operation_of(user, request_id)
    return user, request_id


def _lookup_and_release(key: str | None, request) -> tuple[Any, str]:
    try:
        return _lookup(key, request)
    finally:
        release_connection()


def _state(user, request_id: str):
    try:
        return serializers.future_state(access.operation_of(user, request_id))
    finally:
        release_connection()


@csrf_exempt
async def retrieve_future(request):
    if request.method != "POST":
        not_allowed = JsonResponse(error_body(f"method {request.method} not allowed; use POST"), status=405)
        not_allowed["Allow"] = "POST"
        return not_allowed
    test_hooks.count("retrieve_future")  # proves futures resolved over the WebSocket, not by polling
    try:
        user, request_id = await sync_to_async(_lookup_and_release)(request.headers.get("X-API-Key"), request)
    except ApiError as error:
        if error.field == "X-API-Key":
            return JsonResponse(error_body(error.message, error.field), status=401)
        return json_error(error)
    protobuf = result_proto.wants_protobuf(request.headers.get("Accept", ""))
    deadline = time.monotonic() + settings.LORASMITH.long_poll_seconds
    interval = POLL_INTERVAL
    async with PushWait(user.id, request_id, _in_process_layer()) as wakeup:  # before the first look
        while True:
            state = await sync_to_async(_state)(user, request_id)
            if state is not None:
                return _answer(state, protobuf)
            left = deadline - time.monotonic()
            if left <= 0:
                return JsonResponse({"type": "try_again", "request_id": request_id, "queue_state": "active"})
            await wakeup.wait(min(interval, left))
            interval = min(interval * 1.5, MAX_POLL_INTERVAL)


def _in_process_layer() -> BaseChannelLayer | None:
    """The layer a long-poll listens on for its push: only the in-process one. channels_redis
    serializes a process's receives behind one lock and a 5 s blocking pop, and six waiting
    long-polls held another user's requests up for seconds (test_reliability_long_polls); there,
    and without a layer, a long-poll sleeps between its reads."""
    layer = get_channel_layer()
    return layer if isinstance(layer, InMemoryChannelLayer) else None


def _answer(state: dict, protobuf: bool) -> HttpResponse:
    encoded = result_proto.encode(state) if protobuf else None
    if encoded is None:
        return JsonResponse(state)
    return HttpResponse(encoded, content_type=result_proto.CONTENT_TYPE)


def counters(request):
    """Test-only (LORASMITH_TEST_HOOKS=1): how often retrieve_future was called."""
    found = test_hooks.counters()
    return JsonResponse(found) if found is not None else JsonResponse(error_body("not found"), status=404)
