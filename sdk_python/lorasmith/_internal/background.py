"""One asyncio event loop in a daemon thread per process: all network work runs there, so sync
methods can return futures at once and async callers on any loop can await them."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine
from typing import Any

_loop: asyncio.AbstractEventLoop | None = None
_lock = threading.Lock()


def loop() -> asyncio.AbstractEventLoop:
    global _loop
    with _lock:
        if _loop is None:
            _loop = asyncio.new_event_loop()
            threading.Thread(target=_loop.run_forever, name="lorasmith-loop", daemon=True).start()
        return _loop


def submit(coro: Coroutine[Any, Any, Any]) -> concurrent.futures.Future:
    return asyncio.run_coroutine_threadsafe(coro, loop())


def run(coro: Coroutine[Any, Any, Any], timeout: float | None = None) -> Any:
    """Run on the background loop and block for the answer."""
    if threading.current_thread().name == "lorasmith-loop":
        coro.close()
        raise RuntimeError("a blocking lorasmith call was made on the SDK's own event loop; use the *_async method")
    return submit(coro).result(timeout)
