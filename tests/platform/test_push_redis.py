"""With Redis, the runner is another process: its completions and metrics must still reach the web
process's WebSocket through channels-redis, and a second user's socket must stay silent."""

from __future__ import annotations

import json
import time

import pytest
from websockets.sync.client import connect

from .wire import Wire, datum_json

SEQUENCE = [3, 320, 265, 203, 44, 538, 83, 685, 4]


def _ws(server, key: str):
    return connect(server.base_url.replace("http", "ws") + f"/ws/v1/events?api_key={key}", open_timeout=10)


def _collect(ws, *kinds: str) -> dict:
    """The first message of each kind, in whatever order they arrive."""
    seen: dict = {}
    while set(kinds) - seen.keys():
        message = json.loads(ws.recv(timeout=60))
        seen.setdefault(message["type"], message)
    return seen


@pytest.mark.services
def test_runner_events_cross_processes_to_the_socket(live_server_redis):
    server = live_server_redis
    wire = Wire(server.client())
    model_id = wire.model(wire.session(), seed=21)
    with _ws(server, server.api_key) as ws, _ws(server, server.make_api_key("eve")) as stranger:
        ws.send(json.dumps({"type": "subscribe_run", "model_id": model_id}))
        time.sleep(7)  # idle longer than the channel layer's 5 s blocking read: the socket must survive it
        stranger.send(json.dumps({"type": "subscribe_futures", "request_ids": []}))
        handle = wire.forward_backward(model_id, 1, [datum_json(SEQUENCE)])
        ws.send(json.dumps({"type": "subscribe_futures", "request_ids": [handle["request_id"]]}))
        stranger.send(json.dumps({"type": "subscribe_futures", "request_ids": [handle["request_id"]]}))
        got = _collect(ws, "future", "metrics")
        pushed, metrics = got["future"], got["metrics"]
        stranger.send(json.dumps({"type": "ping?"}))
        assert json.loads(stranger.recv(timeout=30))["type"] == "error"  # nothing of alice's came first
    assert pushed["status"] == "completed" and pushed["result"] == wire.result(handle)
    assert metrics["model_id"] == model_id and metrics["metrics"]["loss:sum"] == pushed["result"]["metrics"]["loss:sum"]
