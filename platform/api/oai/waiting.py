"""Waiting for a sample request to finish, from an async view: woken by the user's push events
(the Channels layer the SDK's WebSocket uses), with the Operation row the truth, re-read at least
every RECHECK_SECONDS in case a push is lost. No database connection is held between reads."""

from __future__ import annotations

import asyncio
import time

from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.db import connection

from training.events import user_group
from training.models import Operation

RECHECK_SECONDS = 2.0


def release_connection() -> None:
    """Hand this thread's database connection back (to the pool on PostgreSQL): a call may wait
    minutes for its cycle, and holding a connection all that time would starve other requests."""
    if not connection.in_atomic_block:
        connection.close()


def _read(op_id: str) -> Operation:
    try:
        return Operation.objects.get(pk=op_id)
    finally:
        release_connection()


read_operation = sync_to_async(_read)


class OperationWatch:
    """Subscribed before the first read, so a finish between the read and the wait still wakes it."""

    def __init__(self, user_id: int, op_id: str):
        self.user_id, self.op_id = user_id, op_id
        self.layer = get_channel_layer()
        self.channel: str | None = None

    async def __aenter__(self) -> OperationWatch:
        if self.layer is not None:
            self.channel = await self.layer.new_channel()
            await self.layer.group_add(user_group(self.user_id), self.channel)
        return self

    async def __aexit__(self, *exc) -> None:
        if self.layer is not None and self.channel is not None:
            await self.layer.group_discard(user_group(self.user_id), self.channel)

    async def finished(self, timeout: float) -> Operation | None:
        """The operation once finished, or None if it is still pending after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            op = await read_operation(self.op_id)
            if op.status in Operation.FINISHED:
                return op
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            await self._pushed(min(left, RECHECK_SECONDS))

    async def _pushed(self, timeout: float) -> None:
        """Returns when this operation's finish is pushed, or after `timeout`."""
        if self.layer is None or self.channel is None:
            await asyncio.sleep(timeout)
            return
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                message = await asyncio.wait_for(self.layer.receive(self.channel), left)
            except TimeoutError:
                return
            if message.get("type") == "future.finished" and message.get("request_id") == self.op_id:
                return
