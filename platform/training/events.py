"""Push to the Channels layer: future completions, run metrics and key revocations, per user group."""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import BaseChannelLayer, InMemoryChannelLayer, get_channel_layer

log = logging.getLogger(__name__)


def user_group(user_id: int) -> str:
    return f"user.{user_id}"


_web_loop: asyncio.AbstractEventLoop | None = None


def bind_web_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Remember the ASGI server's event loop (called by the ASGI app on each connection)."""
    global _web_loop
    _web_loop = loop


def publish(user_id: int, message: dict) -> None:
    """Send `message` to the user's group, without waiting for it to be delivered: the runner goes
    on with its cycle meanwhile (a push is a wake-up; a lost one costs its client a check)."""
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        loop = _sending_loop(layer)
        if loop is not None and not _on_loop(loop):
            send = layer.group_send(user_group(user_id), message)
            sent = asyncio.run_coroutine_threadsafe(_in_turn(send) if loop is _publisher else send, loop)
            sent.add_done_callback(functools.partial(_log_failure, message.get("type")))
        else:
            async_to_sync(layer.group_send)(user_group(user_id), message)
    except Exception:
        log.exception("could not publish %s", message.get("type"))


def _sending_loop(layer: BaseChannelLayer) -> asyncio.AbstractEventLoop | None:
    """Where pushes are sent from. In the web process, its server's own loop: the in-memory layer's
    queues belong to it, and a send from a foreign loop would not wake it (the push would wait for
    its next timer, ~1 s). Elsewhere (a runner), with channels-redis, one loop of this process's own,
    on a thread: channels-redis keeps its connections per loop, so `async_to_sync`, which makes a
    loop per call, opened a Redis connection for every push (`_in_turn` keeps it to one). None:
    send in place."""
    if _web_loop is not None and _web_loop.is_running():
        return _web_loop
    if isinstance(layer, InMemoryChannelLayer):
        return None
    global _publisher
    with _publisher_lock:
        if _publisher is None:  # run_forever starts on its thread; what is sent before waits for it
            _publisher = asyncio.new_event_loop()
            threading.Thread(target=_publisher.run_forever, name="push-publisher", daemon=True).start()
        return _publisher


_publisher: asyncio.AbstractEventLoop | None = None
_publisher_lock = threading.Lock()
_turns = asyncio.Lock()  # used on the publisher's loop only


async def _in_turn(send: Coroutine[Any, Any, None]) -> None:
    """One push at a time, in the order sent: they go out over one connection (a burst of them at
    once would each open one), and a run's metrics arrive in step order."""
    async with _turns:
        await send


def drain(timeout: float) -> bool:
    """Wait until every push handed to this process's publisher loop has been sent (at most
    `timeout` s): a runner stopping gracefully calls it last, so the pushes of its final cycle and
    of its retirement reach their clients instead of dying with the loop's daemon thread. True when
    nothing is left in flight."""
    loop = _publisher
    if loop is None or not loop.is_running():
        return True
    last = asyncio.run_coroutine_threadsafe(_in_turn(asyncio.sleep(0)), loop)  # after every earlier push
    try:
        last.result(timeout)
    except TimeoutError:
        last.cancel()
        return False
    return True


def _log_failure(kind: str | None, sent: Future) -> None:
    if not sent.cancelled() and sent.exception() is not None:
        log.error("could not publish %s", kind, exc_info=sent.exception())


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
