"""WebSocket push: a subscribed future's completion arrives with the same body retrieve_future
gives, a subscribed run streams its metrics, and a bad key is refused."""

from __future__ import annotations

import json

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from .wire import Wire, datum_json

SEQUENCE = [3, 320, 265, 203, 44, 538, 83, 685, 4]


def _ws(server, key):
    return connect(
        server.base_url.replace("http", "ws") + "/ws/v1/events", additional_headers={"X-API-Key": key}, open_timeout=10
    )


def _next(ws, kind):
    return _collect(ws, kind)[kind]


def _collect(ws, *kinds):
    """The first message of each kind, in whatever order they arrive."""
    seen = {}
    while set(kinds) - set(seen):
        message = json.loads(ws.recv(timeout=60))
        seen.setdefault(message["type"], message)
    return seen


def test_future_completion_and_run_metrics_are_pushed(live_server_embedded):
    server = live_server_embedded
    wire = Wire(server.client())
    model_id = wire.model(wire.session(), seed=3)
    with _ws(server, server.api_key) as ws:
        ws.send(json.dumps({"type": "subscribe_run", "model_id": model_id}))
        handle = wire.forward_backward(model_id, 1, [datum_json(SEQUENCE)])
        ws.send(json.dumps({"type": "subscribe_futures", "request_ids": [handle["request_id"]]}))
        first = _collect(ws, "future", "metrics")
        pushed, metrics = first["future"], first["metrics"]
        wire.optim_step(model_id, 2)
        step_metrics = _next(ws, "metrics")
    assert pushed["request_id"] == handle["request_id"] and pushed["status"] == "completed"
    assert pushed["result"] == wire.result(handle)
    assert metrics["model_id"] == model_id and metrics["metrics"]["loss:sum"] == pushed["result"]["metrics"]["loss:sum"]
    assert step_metrics["step"] == 1 and "grad_norm:mean" in step_metrics["metrics"]


def test_failed_future_is_pushed_as_failed(live_server_embedded):
    server = live_server_embedded
    wire = Wire(server.client())
    model_id = wire.model(wire.session(), seed=4, force_runner_failure="yes")
    handle = wire.forward_backward(model_id, 1, [datum_json(SEQUENCE)])
    with _ws(server, server.api_key) as ws:
        ws.send(json.dumps({"type": "subscribe_futures", "request_ids": [handle["request_id"]]}))
        pushed = _next(ws, "future")
    assert pushed["status"] == "failed" and pushed["result"]["category"] == "server"


def test_other_users_futures_and_runs_are_not_pushed(live_server_embedded):
    server = live_server_embedded
    wire = Wire(server.client())
    model_id = wire.model(wire.session(), seed=6)
    handle = wire.forward_backward(model_id, 1, [datum_json(SEQUENCE)])
    wire.result(handle)
    with _ws(server, server.make_api_key("mallory")) as ws:
        ws.send(json.dumps({"type": "subscribe_run", "model_id": model_id}))
        assert "not found" in _next(ws, "error")["error"]
        ws.send(json.dumps({"type": "subscribe_futures", "request_ids": [handle["request_id"]]}))
        ws.send(json.dumps({"type": "bogus"}))
        unknown = json.loads(ws.recv(timeout=30))  # answered as an unknown id: no push, nothing about it
        message = json.loads(ws.recv(timeout=30))  # a pushed future would arrive before this answer
    assert unknown == {
        "type": "error",
        "error": f"future {handle['request_id']!r} not found",
        "field": "request_ids",
        "request_id": handle["request_id"],
    }
    assert message["type"] == "error" and "unknown message type" in message["error"]


def test_bad_key_is_refused(live_server_embedded):
    with pytest.raises((ConnectionClosed, InvalidStatus)), _ws(live_server_embedded, "tml-not-a-real-key") as ws:
        ws.recv(timeout=10)
