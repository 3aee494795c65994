"""The dashboard's WebSocket (`/ws/v1/dashboard`): a logged-in browser (its Django session, through
Channels' AuthMiddlewareStack) subscribes to its runs' metric points.

`{"type": "subscribe_run", "model_id": ..., "after_id": N}` answers every point of the run with an id
above N, then one `points` message whenever the runner records more: ids only grow, so a page that
reconnects asks for what came after the last point it has and misses nothing, twice nothing. A
`run` message ({status, step}) follows the subscription and each finished operation of the run.
Another user's run is answered like a run that does not exist. The handshake must come from this
server's own pages (Origin equal to Host): a session cookie must not let another site listen in.

With `"activity": true` the subscription also gets `activity` messages: the run page's operations
and checkpoints tables as HTML (rendered by the page's own template, so escaping is Django's), at
once, after each finished operation of the run or of a sampler on its weights, and whenever they
change (checked every ACTIVITY_CHECK_SECONDS: an operation starting or being queued sends no event).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any
from urllib.parse import urlsplit

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings

from training import access
from training.errors import NotFound
from training.events import user_group
from training.models import Operation

from .forms import TTL_CHOICES
from .runs import activity_html, points_after, runs_of

POINTS_PER_MESSAGE = 5000
ACTIVITY_CHECK_SECONDS = 2.0


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
        self.activity: dict[str, str] = {}  # run id -> the activity HTML last sent, for runs that asked
        self.watcher: asyncio.Task | None = None
        await self.channel_layer.group_add(user_group(user.id), self.channel_name)
        await self.accept()

    async def disconnect(self, code: int) -> None:
        if getattr(self, "user", None) is not None:
            await self.channel_layer.group_discard(user_group(self.user.id), self.channel_name)
        watcher = getattr(self, "watcher", None)
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

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
            if content.get("activity") is True:
                self.activity[model_id] = ""
                await self._send_activity(model_id)
                if self.watcher is None:
                    self.watcher = asyncio.create_task(self._watch_activity())

    async def run_metrics(self, event: dict) -> None:
        if event["model_id"] in self.after:
            await self._send_points(event["model_id"])

    async def future_finished(self, event: dict) -> None:
        """An operation finished: if it is a subscribed run's, the run's status and steps may have changed."""
        model_id = await database_sync_to_async(self._run_of_operation)(event["request_id"])
        if model_id in self.after:
            await self._send_state(model_id)
            if model_id in self.activity:
                await self._send_activity(model_id)

    def _run_of_operation(self, request_id: str) -> str | None:
        """The run an operation is part of: its own, or for a sample the run whose weights it samples."""
        found = (
            Operation.objects.filter(id=request_id, owner=self.user)
            .values_list("training_run_id", "sampling_session__source_run_id")
            .first()
        )
        return (found[0] or found[1]) if found is not None else None

    async def _watch_activity(self) -> None:
        while True:
            await asyncio.sleep(ACTIVITY_CHECK_SECONDS)
            for model_id in list(self.activity):
                await self._send_activity(model_id)

    async def _send_activity(self, model_id: str) -> None:
        """The run's operations and checkpoints, if they changed since last sent (with its state)."""
        html = await database_sync_to_async(self._activity_html)(model_id)
        if html == self.activity.get(model_id):
            return
        changed_before = bool(self.activity.get(model_id))
        self.activity[model_id] = html
        await self.send_json({"type": "activity", "model_id": model_id, "html": html})
        if changed_before:  # a sample queued or started changes the run's status too
            await self._send_state(model_id)

    def _activity_html(self, model_id: str) -> str:
        run = runs_of(self.user).get(pk=model_id)
        return activity_html(run, self._csrf_token(), TTL_CHOICES)

    def _csrf_token(self) -> str:
        """The browser's CSRF cookie, for the checkpoint forms in pushed HTML (the page's own token)."""
        headers = {k.decode().lower(): v.decode() for k, v in self.scope.get("headers", [])}
        cookies = dict(part.strip().split("=", 1) for part in headers.get("cookie", "").split(";") if "=" in part)
        return cookies.get(settings.CSRF_COOKIE_NAME, "")

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
