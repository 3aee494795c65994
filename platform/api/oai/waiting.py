"""Waiting for a sample request to finish, from an async view: woken by the user's push events
(the Channels layer the SDK's WebSocket uses), with the Operation row the truth, re-read at least
every RECHECK_SECONDS in case a push is lost. No database connection is held between reads."""

from __future__ import annotations

import time

from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer

from training.models import Operation

from ..push_wait import PushWait, release_connection

RECHECK_SECONDS = 2.0


def _read(op_id: str) -> Operation:
    try:
        return Operation.objects.get(pk=op_id)
    finally:
        release_connection()


read_operation = sync_to_async(_read)


class OperationWatch(PushWait):
    """Woken by the operation's push on the user's layer, whichever it is."""

    def __init__(self, user_id: int, op_id: str):
        super().__init__(user_id, op_id, get_channel_layer())

    async def finished(self, timeout: float) -> Operation | None:
        """The operation once finished, or None if it is still pending after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            op = await read_operation(self.request_id)
            if op.status in Operation.FINISHED:
                return op
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            await self.wait(min(left, RECHECK_SECONDS))
