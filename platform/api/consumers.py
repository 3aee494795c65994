"""WebSocket push: a client subscribes to its futures and runs, the runner's events arrive through
the Channels layer, and each future's push carries exactly what retrieve_future would answer.

Every frame goes through the same JSON boundary as request bodies. A bad frame is answered with
an `error` message and the connection stays open (never a 1011 close for client input); a
subscription is never dropped silently: a future that cannot be looked up now stays subscribed,
and the client is told so (its own retrieve_future reconciliation covers the gap).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any
from urllib.parse import parse_qs

from channels.consumer import get_handler_name
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings

from accounts.services import key_id_of, key_still_active, user_for_key
from training import access
from training.errors import BadRequest
from training.events import user_group
from training.models import Operation

from . import request_json, serializers

log = logging.getLogger(__name__)
MAX_IDS_PER_MESSAGE = 1000
MAX_SUBSCRIPTIONS = 1000  # futures one connection may wait on at once (each is looked up, and held)
REVOKED = 4401


class EventsConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self) -> None:
        headers = {k.decode().lower(): v.decode() for k, v in self.scope.get("headers", [])}
        query = parse_qs(self.scope.get("query_string", b"").decode())
        key = headers.get("x-api-key") or query.get("api_key", [None])[0]
        self.user = await database_sync_to_async(user_for_key)(key)
        if self.user is None:
            await self.close(code=4401)
            return
        self.key_id = key_id_of(self.user)
        self.futures: set[str] = set()
        self.runs: set[str] = set()
        await self.channel_layer.group_add(user_group(self.user.id), self.channel_name)
        await self.accept()
        self.key_watch = asyncio.ensure_future(self._watch_key())

    async def dispatch(self, message: dict) -> None:
        """Channels' own dispatch first closes old database connections, a hop to a thread for every
        message, pushes included. Every handler here reaches the database only through
        `database_sync_to_async`, which closes them itself around its call: so a push costs one hop,
        not two, and one that needs no lookup costs none."""
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"no handler for message type {message['type']!r}")
        await handler(message)

    async def disconnect(self, code: int) -> None:
        watch = getattr(self, "key_watch", None)
        if watch is not None:
            watch.cancel()
        if getattr(self, "user", None) is not None:
            await self.channel_layer.group_discard(user_group(self.user.id), self.channel_name)

    async def _watch_key(self) -> None:
        """Revocation closes this socket from whichever process revoked the key. Where the revoker
        shares this server's channel layer its push (`api_key_revoked`) closes it at once; where it
        does not (`manage.py api_keys --revoke` in embedded mode has an in-memory layer of its own)
        this re-check does, within LORASMITH_WS_KEY_CHECK_SECONDS. Each push re-checks too, so no
        result reaches a revoked key meanwhile."""
        while True:
            await asyncio.sleep(settings.LORASMITH.ws_key_check_seconds)
            try:
                active = await database_sync_to_async(key_still_active)(self.key_id)
            except Exception:  # e.g. no database connection free: check again next time
                log.warning("could not re-check the key of a WebSocket", exc_info=True)
                continue
            if not active:
                await self.close(code=REVOKED)
                return

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None, **kwargs: Any) -> None:
        if text_data is None:
            await self._error("send JSON text frames; binary frames are not understood", "message")
            return
        try:
            content = request_json.parse(text_data, field="message")
        except BadRequest as error:
            await self._error(error.message, error.field)
            return
        if not isinstance(content, dict):
            await self._error("a message must be a JSON object with a 'type'", "message")
            return
        await self.receive_json(content)

    async def receive_json(self, content: dict, **kwargs: Any) -> None:
        kind = content.get("type")
        if kind == "subscribe_futures":
            ids = content.get("request_ids")
            if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids) or len(ids) > MAX_IDS_PER_MESSAGE:
                await self._error(f"request_ids must be a list of at most {MAX_IDS_PER_MESSAGE} strings", "request_ids")
                return
            new = [i for i in dict.fromkeys(ids) if i not in self.futures]
            if len(self.futures) + len(new) > MAX_SUBSCRIPTIONS:
                await self._error(
                    f"at most {MAX_SUBSCRIPTIONS} futures may be subscribed on one connection ({len(self.futures)} "
                    "are now); subscribe more once some have resolved, or open another connection",
                    "request_ids",
                )
                return
            self.futures.update(new)
            await self._push_futures(new)  # already finished: pushed now, so no completion is ever missed
        elif kind == "subscribe_run":
            model_id = content.get("model_id")
            if not isinstance(model_id, str):
                await self._error("model_id must be a string", "model_id")
            elif await database_sync_to_async(access.owns_run)(self.user, model_id):
                self.runs.add(model_id)
            else:
                await self._error(f"model {model_id!r} not found", "model_id")
        else:
            await self._error(f"unknown message type {kind!r}; use subscribe_futures or subscribe_run", "type")

    async def future_finished(self, event: dict) -> None:
        if event["request_id"] in self.futures:
            await self._push_futures([event["request_id"]])

    async def api_key_revoked(self, event: dict) -> None:
        if event["key_id"] == self.key_id:  # refused at once, as the API refuses it
            await self.close(code=REVOKED)

    async def run_metrics(self, event: dict) -> None:
        if event["model_id"] in self.runs:
            await self._send(
                {"type": "metrics", "model_id": event["model_id"], "step": event["step"], "metrics": event["metrics"]}
            )

    async def _push_futures(self, request_ids: list[str]) -> None:
        """Push each of `request_ids` that has finished (one query for all); an id that is not the
        user's future gets an error frame naming it and is dropped."""
        if not request_ids:
            return
        try:
            active, ops = await database_sync_to_async(self._lookup)(request_ids)
        except Exception:  # e.g. no database connection free: keep the subscriptions
            log.warning("could not look up %d futures for push; they stay subscribed", len(request_ids), exc_info=True)
            await self._send(
                {
                    "type": "error",
                    "error": "the server could not look up these futures now; "
                    "they stay subscribed (poll retrieve_future meanwhile)",
                    "request_ids": request_ids,
                }
            )
            return
        if not active:
            await self.close(code=REVOKED)
            return
        for request_id in request_ids:
            op = ops.get(request_id)
            if op is None:
                self.futures.discard(request_id)
                await self._send(
                    {
                        "type": "error",
                        "error": f"future {request_id!r} not found",
                        "field": "request_ids",
                        "request_id": request_id,
                    }
                )
                continue
            state, status = serializers.future_state(op), serializers.future_status(op)
            if state is None or request_id not in self.futures:
                continue
            self.futures.discard(request_id)
            await self._send({"type": "future", "request_id": request_id, "status": status, "result": state})

    def _lookup(self, request_ids: list[str]) -> tuple[bool, dict[str, Operation]]:
        return key_still_active(self.key_id), access.operations_of(self.user, request_ids)

    async def _send(self, message: dict) -> None:
        """A client may close its socket while a push is on its way (its future already resolved
        by a check): that push is simply not needed any more, which is no server error."""
        try:
            await self.send_json(message)
        except Exception as error:  # daphne raises autobahn's Disconnected here
            if "closed" not in str(error).lower():
                raise
            log.debug("push to a closed socket dropped: %s", message.get("type"))

    async def _error(self, message: str, field: str) -> None:
        await self._send({"type": "error", "error": message, "field": field})
