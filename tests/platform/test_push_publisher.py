"""A runner's pushes through channels-redis (against the real Redis): every one arrives, in the
order sent, over the publisher's one connection, where a loop made per push opened a Redis
connection for every one (as `async_to_sync` did)."""

from __future__ import annotations

import asyncio
import threading
import uuid

import pytest
import redis
from channels.layers import channel_layers, get_channel_layer

from tests.conftest import REDIS_TEST_URL, _redis_ok, _require
from training import events

PUSHES = 20


@pytest.fixture
def redis_layer(settings):
    _require("Redis", _redis_ok())
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [REDIS_TEST_URL], "prefix": f"push-test-{uuid.uuid4().hex[:8]}"},
        }
    }
    channel_layers.backends.clear()
    yield get_channel_layer()
    channel_layers.backends.clear()


def _accepted_connections() -> int:
    return int(redis.Redis.from_url(REDIS_TEST_URL).info("stats")["total_connections_received"])


def test_a_runners_pushes_all_arrive_over_the_publishers_connections(redis_layer):
    async def listen() -> str:
        channel = await redis_layer.new_channel()
        await redis_layer.group_add(events.user_group(7), channel)
        return channel

    async def drain(channel: str) -> list[int]:
        return [(await asyncio.wait_for(redis_layer.receive(channel), 10))["step"] for _ in range(PUSHES)]

    loop = asyncio.new_event_loop()
    channel = loop.run_until_complete(listen())
    events.publish(7, {"type": "run.metrics", "model_id": "m", "step": -1, "metrics": {}})  # the publisher starts
    loop.run_until_complete(asyncio.wait_for(redis_layer.receive(channel), 10))
    before = _accepted_connections()
    sender = threading.Thread(
        target=lambda: [events.metrics(7, "m", step, {}) for step in range(PUSHES)], name="a runner's cycle"
    )
    sender.start()
    sender.join(10)
    got = loop.run_until_complete(drain(channel))
    loop.close()
    assert got == list(range(PUSHES))
    assert _accepted_connections() - before <= 2  # this count's own connection, and at most one more


def test_drain_returns_once_every_push_handed_to_the_publisher_is_sent(redis_layer, monkeypatch):
    """A runner stopping gracefully calls `drain` last: it returns only once the publisher has sent
    every push handed to it (each send slowed here, so 20 take at least 0.4 s), and they arrive in
    order; pushes still in flight would otherwise die with the publisher's daemon thread."""

    async def listen() -> str:
        channel = await redis_layer.new_channel()
        await redis_layer.group_add(events.user_group(7), channel)
        return channel

    loop = asyncio.new_event_loop()
    channel = loop.run_until_complete(listen())
    events.publish(7, {"type": "run.metrics", "model_id": "m", "step": -1, "metrics": {}})  # the publisher starts
    loop.run_until_complete(asyncio.wait_for(redis_layer.receive(channel), 10))
    assert events.drain(10)  # nothing in flight

    sent: list[int] = []
    group_send = redis_layer.group_send

    async def slow_send(group: str, message: dict) -> None:
        await asyncio.sleep(0.02)
        await group_send(group, message)
        sent.append(message["step"])

    monkeypatch.setattr(redis_layer, "group_send", slow_send)
    for step in range(PUSHES):
        events.metrics(7, "m", step, {})
    assert events.drain(10)
    assert sent == list(range(PUSHES))  # all of them sent by the time it returned
    got = [loop.run_until_complete(asyncio.wait_for(redis_layer.receive(channel), 10))["step"] for _ in range(PUSHES)]
    loop.close()
    assert got == list(range(PUSHES))
