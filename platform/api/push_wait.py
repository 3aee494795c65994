"""Waiting, in an async view, for the push that one operation finished (`future.finished` on its
owner's group, the WebSocket's source) while holding no database connection: the long-poll
(`futures.retrieve_future`) and the OpenAI-compatible calls (`oai.waiting`) both wait this way, the
Operation row staying the truth that each re-reads."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Self

from channels.layers import BaseChannelLayer
from django.db import connection

from training.events import user_group

log = logging.getLogger(__name__)


def release_connection() -> None:
    """Hand this thread's database connection back (to the pool on PostgreSQL) between reads: a wait
    may last minutes, and holding a connection all that time would let a few waiting requests take
    every connection from everyone else's."""
    if not connection.in_atomic_block:
        connection.close()


class PushWait:
    """Listens on a channel of the user's group for the wait's lifetime; entered before the first
    read of the row, so a finish between that read and the wait still wakes it. With no `layer`, or
    one that fails, it sleeps instead: the row is re-read anyway, so a lost push costs only time."""

    def __init__(self, user_id: int, request_id: str, layer: BaseChannelLayer | None) -> None:
        self.group, self.request_id, self.layer = user_group(user_id), request_id, layer
        self.channel: str | None = None

    async def __aenter__(self) -> Self:
        if self.layer is not None:
            try:
                self.channel = await self.layer.new_channel()
                await self.layer.group_add(self.group, self.channel)
            except Exception:
                log.warning("waiting without push wake-up (channel layer unavailable)", exc_info=True)
                self.channel = None
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.layer is not None and self.channel is not None:
            try:
                await self.layer.group_discard(self.group, self.channel)
            except Exception:
                log.warning("could not leave the push group of a wait", exc_info=True)

    async def wait(self, seconds: float) -> None:
        """Return when the operation's push comes, or after `seconds`."""
        if self.layer is None or self.channel is None:
            await asyncio.sleep(seconds)
            return
        until = time.monotonic() + seconds
        while (left := until - time.monotonic()) > 0:
            try:
                message = await asyncio.wait_for(self.layer.receive(self.channel), left)
            except TimeoutError:
                return
            except Exception:  # the layer failed: fall back to a plain wait
                log.warning("push wake-up failed", exc_info=True)
                self.channel = None
                await asyncio.sleep(max(0.0, until - time.monotonic()))
                return
            if message.get("type") == "future.finished" and message.get("request_id") == self.request_id:
                return
