"""Push to the Channels layer: future completions and run metrics, per user group."""
from __future__ import annotations

import logging

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

log = logging.getLogger(__name__)


def user_group(user_id: int) -> str:
    return f"user.{user_id}"


def publish(user_id: int, message: dict) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        async_to_sync(layer.group_send)(user_group(user_id), message)
    except Exception:  # noqa: BLE001 - push is best effort; polling stays correct
        log.exception("could not publish %s", message.get("type"))


def future_finished(user_id: int, request_id: str) -> None:
    publish(user_id, {"type": "future.finished", "request_id": request_id})


def metrics(user_id: int, model_id: str, step: int, values: dict) -> None:
    publish(user_id, {"type": "run.metrics", "model_id": model_id, "step": step, "metrics": values})
