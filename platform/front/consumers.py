"""The dashboard's WebSocket (`/ws/v1/dashboard`): a logged-in browser (its Django session, through
Channels' AuthMiddlewareStack) subscribes to its runs' metric points.

`{"type": "subscribe_run", "model_id": ..., "after_id": N}` answers every point of the run with an id
above N, then one `points` message whenever the runner records more: ids only grow, so a page that
reconnects asks for what came after the last point it has and misses nothing, twice nothing. A
`run` message ({status, step}) follows the subscription and each finished operation of the run.
Another user's run is answered like a run that does not exist. The handshake must come from this
server's own pages (Origin equal to Host): a session cookie must not let another site listen in.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from training import access
from training.errors import NotFound
from training.events import user_group
from training.models import Operation

from .runs import points_after, runs_of

POINTS_PER_MESSAGE = 5000


def same_origin(scope: dict) -> bool:
    headers = {k.decode().lower(): v.decode() for k, v in scope.get("headers", [])}
    origin = headers.get("origin")
    return origin is None or urlsplit(origin).netloc == headers.get("host")


class DashboardConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated or not same_origin(self.scope):
            await self.close(code=4401)
            return
        self.user = user
        self.after: dict[str, int] = {}  # subscribed run id -> id of the last point sent
        await self.channel_layer.group_add(user_group(user.id), self.channel_name)
        await self.accept()

    async def disconnect(self, code: int) -> None:
        if getattr(self, "user", None) is not None:
            await self.channel_layer.group_discard(user_group(self.user.id), self.channel_name)

    async def dispatch(self, message: dict) -> None:
        # the user's group carries events for the SDK's consumer too; those this one has no use for are skipped
        if message.get("type", "").startswith("websocket.") or hasattr(self, message.get("type", "").replace(".", "_")):
            await super().dispatch(message)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None, **kwargs: Any) -> None:
        try:
            content = json.loads(text_data or "")
        except ValueError:
            content = None
        if not isinstance(content, dict):
            await self._error("send a JSON object with a 'type'")
            return
        await self.receive_json(content)

    async def receive_json(self, content: dict, **kwargs: Any) -> None:
        model_id, after_id = content.get("model_id"), content.get("after_id", 0)
        if content.get("type") != "subscribe_run":
            await self._error("the only message understood is subscribe_run")
        elif not isinstance(model_id, str) or type(after_id) is not int or after_id < 0:
            await self._error("subscribe_run needs a model_id string and an after_id integer >= 0")
        elif not await self._owns_run(model_id):
            await self._error(f"run {model_id!r} not found")
        else:
            self.after[model_id] = after_id
            await self._send_points(model_id)
            await self._send_state(model_id)

    async def run_metrics(self, event: dict) -> None:
        if event["model_id"] in self.after:
            await self._send_points(event["model_id"])

    async def future_finished(self, event: dict) -> None:
        """An operation finished: if it is a subscribed run's, the run's status and steps may have changed."""
        model_id = await database_sync_to_async(self._run_of_operation)(event["request_id"])
        if model_id in self.after:
            await self._send_state(model_id)

    def _run_of_operation(self, request_id: str) -> str | None:
        return (
            Operation.objects.filter(id=request_id, owner=self.user).values_list("training_run_id", flat=True).first()
        )

    async def _send_state(self, model_id: str) -> None:
        state = runs_of(self.user).values("status", "step")  # type: ignore[misc]  # an annotation, unseen by the stubs
        run = await database_sync_to_async(state.get)(id=model_id)
        await self.send_json({"type": "run", "model_id": model_id, "status": run["status"], "step": run["step"]})

    async def _send_points(self, model_id: str) -> None:
        while True:
            points = await database_sync_to_async(points_after)(model_id, self.after[model_id], POINTS_PER_MESSAGE)
            if points:
                self.after[model_id] = points[-1][0]
                await self.send_json({"type": "points", "model_id": model_id, "points": points})
            if len(points) < POINTS_PER_MESSAGE:
                return

    async def _owns_run(self, model_id: str) -> bool:
        try:
            await database_sync_to_async(access.training_run_of)(self.user, model_id)
        except NotFound:
            return False
        return True

    async def _error(self, message: str) -> None:
        await self.send_json({"type": "error", "error": message})
