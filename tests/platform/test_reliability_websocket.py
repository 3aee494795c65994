"""The WebSocket bounds what one connection subscribes to and answers every id it is given
(issue 19): an unknown future id gets an error frame naming it, and a connection cannot hold more
than its share of subscriptions."""

from __future__ import annotations

import json

from websockets.sync.client import connect

from api.consumers import MAX_SUBSCRIPTIONS

from .wire import Wire


def _ws(server):
    url = server.base_url.replace("http", "ws") + "/ws/v1/events"
    return connect(url, additional_headers={"X-API-Key": server.api_key}, open_timeout=10)


def _frame(ws) -> dict:
    return json.loads(ws.recv(timeout=30))


def test_an_unknown_future_id_gets_an_error_naming_it(live_server_embedded):
    with _ws(live_server_embedded) as ws:
        ws.send(json.dumps({"type": "subscribe_futures", "request_ids": ["no-such-future"]}))
        error = _frame(ws)
    assert error["type"] == "error" and error["request_id"] == "no-such-future"
    assert "no-such-future" in error["error"] and error["field"] == "request_ids"


def test_another_users_future_is_unknown_too(live_server_embedded):
    server = live_server_embedded
    other = Wire(server.client(server.make_api_key("erin")))
    handle = other.create_model(other.session()).json()
    with _ws(server) as ws:
        ws.send(json.dumps({"type": "subscribe_futures", "request_ids": [handle["request_id"]]}))
        error = _frame(ws)
    assert error["type"] == "error" and error["request_id"] == handle["request_id"]


def test_subscriptions_per_connection_are_bounded(live_server_embedded):
    server = live_server_embedded
    wire = Wire(server.client())
    model = wire.model(wire.session(), seed=8)
    pending = wire.forward_backward(model, 9, None)["request_id"]  # waits for seqs 1-8: stays pending
    with _ws(server) as ws:
        ws.send(json.dumps({"type": "subscribe_futures", "request_ids": [pending]}))
        unknown = [f"unknown-{i}" for i in range(MAX_SUBSCRIPTIONS - 1)]  # with the pending one: at the bound
        ws.send(json.dumps({"type": "subscribe_futures", "request_ids": unknown}))
        frames = [_frame(ws) for _ in unknown]
        assert {frame.get("request_id") for frame in frames} == set(unknown)  # each answered, then dropped
        over = [f"more-{i}" for i in range(MAX_SUBSCRIPTIONS)]  # with the pending one: one over the bound
        ws.send(json.dumps({"type": "subscribe_futures", "request_ids": over}))
        refused = _frame(ws)
    assert refused["type"] == "error" and refused["field"] == "request_ids"
    assert str(MAX_SUBSCRIPTIONS) in refused["error"]
