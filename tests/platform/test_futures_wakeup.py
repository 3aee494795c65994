"""The long-poll is woken by the push that its future finished (issue 22, the service's overhead):
with its own re-checks pushed beyond a 60 s window, only the push can make it answer within 20 s."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.layers import get_channel_layer
from django.test import AsyncClient
from django.utils import timezone

from accounts.services import ensure_user, issue_api_key
from api import futures
from training import dispatch, events
from training.models import Operation

from .wire import InProcess, Wire


@pytest.fixture
def pending(transactional_db, monkeypatch, settings) -> tuple[str, Operation]:
    settings.LORASMITH = dataclasses.replace(settings.LORASMITH, long_poll_seconds=60.0)
    monkeypatch.setattr(futures, "POLL_INTERVAL", 120.0)  # no re-check within the window
    monkeypatch.setattr(dispatch, "dispatch", lambda base_model: None)  # it stays queued
    key = issue_api_key(ensure_user("poller"), "k")
    wire = Wire(InProcess(key))
    handle = wire.create_model(wire.session()).json()
    return key, Operation.objects.get(pk=handle["request_id"])


def _finish(op: Operation) -> None:
    Operation.objects.filter(pk=op.pk).update(
        status="done", result={"model_id": op.training_run_id, "type": "create_model"}, finished_at=timezone.now()
    )


def _long_poll(key: str, op: Operation, push: bool) -> dict:
    async def scenario() -> dict:
        client = AsyncClient()
        body = {"request_id": op.pk}
        poll = asyncio.ensure_future(
            client.post("/api/v1/retrieve_future", body, content_type="application/json", headers={"X-API-Key": key})
        )
        await asyncio.sleep(0.5)  # the poll has looked once and waits
        await sync_to_async(_finish)(op)
        if push:
            await get_channel_layer().group_send(
                events.user_group(op.owner_id), {"type": "future.finished", "request_id": op.pk}
            )
        return (await asyncio.wait_for(poll, 20)).json()

    return async_to_sync(scenario)()


def test_the_push_wakes_the_long_poll_with_the_result(pending):
    key, op = pending
    assert _long_poll(key, op, push=True) == {"model_id": op.training_run_id, "type": "create_model"}
