"""WebSocket push: a client subscribes to its futures and runs, the runner's events arrive through
the Channels layer, and each future's push carries exactly what retrieve_future would answer.

Every frame goes through the same JSON boundary as request bodies. A bad frame is answered with
an `error` message and the connection stays open (never a 1011 close for client input); a
subscription is never dropped silently: a future that cannot be looked up now stays subscribed,
and the client is told so (its own retrieve_future reconciliation covers the gap).
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from accounts.services import key_id_of, user_for_key
from training.errors import BadRequest
from training.events import user_group
from training.models import Operation, TrainingRun

from . import request_json, serializers

log = logging.getLogger(__name__)
MAX_IDS_PER_MESSAGE = 1000


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

    async def disconnect(self, code: int) -> None:
        if getattr(self, "user", None) is not None:
            await self.channel_layer.group_discard(user_group(self.user.id), self.channel_name)

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
            self.futures.update(ids)
            for request_id in ids:  # already finished: push now, so no completion is ever missed
                await self._push_future(request_id)
        elif kind == "subscribe_run":
            model_id = content.get("model_id")
            if not isinstance(model_id, str):
                await self._error("model_id must be a string", "model_id")
            elif await self._owns_run(model_id):
                self.runs.add(model_id)
            else:
                await self._error(f"model {model_id!r} not found", "model_id")
        else:
            await self._error(f"unknown message type {kind!r}; use subscribe_futures or subscribe_run", "type")

    async def future_finished(self, event: dict) -> None:
        if event["request_id"] in self.futures:
            await self._push_future(event["request_id"])

    async def api_key_revoked(self, event: dict) -> None:
        if event["key_id"] == self.key_id:  # refused at once, as the API refuses it
            await self.close(code=4401)

    async def run_metrics(self, event: dict) -> None:
        if event["model_id"] in self.runs:
            await self._send(
                {"type": "metrics", "model_id": event["model_id"], "step": event["step"], "metrics": event["metrics"]}
            )

    async def _owns_run(self, model_id: str) -> bool:
        return await database_sync_to_async(TrainingRun.objects.filter(id=model_id, owner=self.user).exists)()

    async def _push_future(self, request_id: str) -> None:
        try:
            op = await database_sync_to_async(Operation.objects.filter(id=request_id, owner=self.user).first)()
        except Exception:  # e.g. no database connection free: keep the subscription
            log.warning("could not look up future %s for push; it stays subscribed", request_id, exc_info=True)
            await self._send(
                {
                    "type": "error",
                    "error": "the server could not look up this future now; "
                    "it stays subscribed (poll retrieve_future meanwhile)",
                    "request_id": request_id,
                }
            )
            return
        state = serializers.future_state(op) if op is not None else None
        if op is None or state is None or request_id not in self.futures:
            return
        self.futures.discard(request_id)
        status = "failed" if "error" in state and op.status != Operation.Status.DONE else "completed"
        await self._send({"type": "future", "request_id": request_id, "status": status, "result": state})

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
