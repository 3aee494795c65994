"""Futures and the smaller wire endpoints: the long-poll answers `try_again` after its window,
unknown futures are 404, `forward_only` leaves the weights alone, and the accept-and-drop
endpoints answer."""

from __future__ import annotations

import time

import pytest

from .wire import Wire, datum_json

SEQUENCE = [3, 320, 265, 203, 44, 538, 83, 685, 4]


def test_pending_future_long_polls_then_says_try_again(live_server_embedded):
    server = live_server_embedded
    wire = Wire(server.client())
    model_id = wire.model(wire.session(), seed=11)
    early = wire.forward_backward(model_id, 2, [datum_json(SEQUENCE)])  # seq 1 is missing: it waits
    before = server.retrieve_future_count()
    started = time.monotonic()
    answer = wire.post("retrieve_future", {"request_id": early["request_id"], "allow_metadata_only": True})
    waited = time.monotonic() - started
    assert answer == {"type": "try_again", "request_id": early["request_id"], "queue_state": "active"}
    assert 2.5 <= waited < 10  # the fixture's LORASMITH_LONG_POLL_SECONDS is 3
    assert server.retrieve_future_count() == before + 1
    wire.forward_backward(model_id, 1, [datum_json(SEQUENCE)])
    assert wire.result(early)["metrics"]["loss:sum"] > 0


def test_unknown_future_is_404_with_a_body(live_server_embedded):
    client = live_server_embedded.client()
    missing = client.post("retrieve_future", json={"request_id": "no-such-future"})
    assert missing.status_code == 404 and missing.json()["error"]
    blank = client.post("retrieve_future", json={})
    assert blank.status_code == 400 and blank.json()["field"] == "request_id"


def test_forward_only_computes_without_training(live_server_embedded):
    wire = Wire(live_server_embedded.client())
    model_id = wire.model(wire.session(), seed=12)
    data = [datum_json(SEQUENCE)]
    looked = wire.result(wire.forward_backward(model_id, 1, data, forward_only=True))
    assert len(looked["loss_fn_outputs"][0]["logprobs"]["data"]) == len(SEQUENCE) - 1
    wire.result(wire.optim_step(model_id, 2, lr=0.1))  # no gradients were kept: the step changes nothing
    trained = wire.result(wire.forward_backward(model_id, 3, data, loss_fn_config_v2={"note": "text is ignored"}))
    assert trained["metrics"]["loss:sum"] == pytest.approx(looked["metrics"]["loss:sum"], rel=1e-5)
    via_forward = wire.result(
        wire.post("forward", {"model_id": model_id, "seq_id": 4, "data": data, "loss_fn": "cross_entropy"})
    )
    assert via_forward["metrics"]["loss:sum"] == pytest.approx(looked["metrics"]["loss:sum"], rel=1e-5)


def test_dynamic_config_and_telemetry_answer(live_server_embedded):
    wire = Wire(live_server_embedded.client())
    assert wire.post("client/dynamic_config", {"sdk_version": "0.38.0"}) == {
        "refresh_interval_sec": 300,
        "sample_cancel_enabled": False,
        "sample_cancel_max_batch_size": 64,
    }
    assert wire.post("telemetry", {"events": [{"event": "x"}], "platform": "test", "sdk_version": "0"}) == {
        "status": "accepted"
    }
