"""WebSocket push: a client subscribes to its futures and runs, the runner's events arrive through
the Channels layer, and each future's push carries exactly what retrieve_future would answer."""

from __future__ import annotations

from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from accounts.services import user_for_key
from training.events import user_group
from training.models import Operation, TrainingRun

from . import serializers


class EventsConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self):
        headers = {k.decode().lower(): v.decode() for k, v in self.scope.get("headers", [])}
        key = (
            headers.get("x-api-key") or parse_qs(self.scope.get("query_string", b"").decode()).get("api_key", [None])[0]
        )
        self.user = await database_sync_to_async(user_for_key)(key)
        if self.user is None:
            await self.close(code=4401)
            return
        self.futures: set[str] = set()
        self.runs: set[str] = set()
        await self.channel_layer.group_add(user_group(self.user.id), self.channel_name)
        await self.accept()

    async def disconnect(self, code):
        if getattr(self, "user", None) is not None:
            await self.channel_layer.group_discard(user_group(self.user.id), self.channel_name)

    async def receive_json(self, content, **kwargs):
        kind = content.get("type")
        if kind == "subscribe_futures":
            ids = [i for i in content.get("request_ids", []) if isinstance(i, str)]
            self.futures.update(ids)
            for request_id in ids:  # already finished: push now, so no completion is ever missed
                await self._push_future(request_id)
        elif kind == "subscribe_run":
            model_id = content.get("model_id")
            if await database_sync_to_async(TrainingRun.objects.filter(id=model_id, owner=self.user).exists)():
                self.runs.add(model_id)
            else:
                await self.send_json({"type": "error", "error": f"model {model_id!r} not found"})
        else:
            await self.send_json({"type": "error", "error": f"unknown message type {kind!r}"})

    async def future_finished(self, event):
        if event["request_id"] in self.futures:
            await self._push_future(event["request_id"])

    async def run_metrics(self, event):
        if event["model_id"] in self.runs:
            await self.send_json(
                {"type": "metrics", "model_id": event["model_id"], "step": event["step"], "metrics": event["metrics"]}
            )

    async def _push_future(self, request_id: str):
        op = await database_sync_to_async(Operation.objects.filter(id=request_id, owner=self.user).first)()
        state = serializers.future_state(op) if op is not None else None
        if state is None or request_id not in self.futures:
            return
        self.futures.discard(request_id)
        status = "failed" if "error" in state and op.status != Operation.Status.DONE else "completed"
        await self.send_json({"type": "future", "request_id": request_id, "status": status, "result": state})
