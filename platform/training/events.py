"""Push to the Channels layer: future completions, run metrics and key revocations, per user group."""

from __future__ import annotations

import asyncio
import logging

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

log = logging.getLogger(__name__)


def user_group(user_id: int) -> str:
    return f"user.{user_id}"


_web_loop: asyncio.AbstractEventLoop | None = None


def bind_web_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Remember the ASGI server's event loop (called by the ASGI app on each connection)."""
    global _web_loop
    _web_loop = loop


def publish(user_id: int, message: dict) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        loop = _web_loop
        if loop is not None and loop.is_running() and not _on_loop(loop):
            # From another thread of the web process (the embedded runner, a sync view): send on the
            # server's own loop. The in-memory layer's queues belong to that loop; a send from a
            # foreign loop would not wake it, and the push would wait for its next timer (~1 s).
            asyncio.run_coroutine_threadsafe(layer.group_send(user_group(user_id), message), loop).result(timeout=10)
        else:
            async_to_sync(layer.group_send)(user_group(user_id), message)
    except Exception:
        log.exception("could not publish %s", message.get("type"))


def _on_loop(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


def future_finished(user_id: int, request_id: str) -> None:
    publish(user_id, {"type": "future.finished", "request_id": request_id})


def metrics(user_id: int, model_id: str, step: int, values: dict) -> None:
    publish(user_id, {"type": "run.metrics", "model_id": model_id, "step": step, "metrics": values})


def api_key_revoked(user_id: int, key_id: int) -> None:
    """The SDK WebSockets opened with key `key_id` close (the API refuses it from now on)."""
    publish(user_id, {"type": "api_key.revoked", "key_id": key_id})
