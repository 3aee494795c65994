"""Hostile input, each case as an outside tester found it, on both deployments (SQLite embedded,
PostgreSQL + Redis + a separate runner): a 4xx with a JSON body naming the place, no traceback
in the server's log, and the same model's next request still runs (a refused training request
uses up its seq_id, whatever the reason it was refused)."""

from __future__ import annotations

import json

import httpx
import pytest
from websockets.sync.client import connect

from .wire import TOKENS, Wire, datum_json, prompt_json


@pytest.fixture(scope="module", params=["embedded", "postgres_redis"])
def server(request):
    return request.getfixturevalue("live_server_embedded" if request.param == "embedded" else "live_server_redis")


@pytest.fixture
def quiet_log(server):
    """Fails the test if the web process logged a traceback meanwhile."""
    log = server.logs / "web.log"
    before = log.read_text().count("Traceback")
    yield
    assert log.read_text().count("Traceback") == before, log.read_text()[-3000:]


@pytest.fixture(scope="module")
def model(server):
    """A model whose seqs the cases use one by one; each case checks the next seq still runs."""
    wire = Wire(server.client())
    session = wire.session()
    return {"wire": wire, "session": session, "model_id": wire.model(session, seed=5), "next_seq": [1]}


def _raw(server, path: str, raw: bytes) -> httpx.Response:
    with server.client() as client:
        return client.post(path, content=raw, headers={"Content-Type": "application/json"})


def _refused(response: httpx.Response, status: int, field: str, message: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["field"] == field and message in body["error"], body
    return body


def _then_next_seq_runs(model: dict) -> None:
    """The refused seq was used up: the model's next request is accepted and completes."""
    wire, seq = model["wire"], model["next_seq"][0]
    handle = wire.forward_backward(model["model_id"], seq, [datum_json(TOKENS)])
    assert "loss:sum" in wire.result(handle, timeout=60)["metrics"]
    model["next_seq"][0] = seq + 1


def _take_seq(model: dict) -> int:
    seq = model["next_seq"][0]
    model["next_seq"][0] = seq + 1
    return seq


@pytest.mark.parametrize("path", ["create_session", "forward_backward", "asample", "retrieve_future"])
def test_json_nested_ten_thousand_deep_is_400(server, quiet_log, path):
    _refused(_raw(server, path, b"[" * 10_000 + b"]" * 10_000), 400, "body", "nested more than")


@pytest.mark.parametrize(
    ("name", "raw_value", "field", "message"),
    [
        ("int64 overflow", str(2**70), "data[0].loss_fn_inputs.target_tokens.data[1]", "64-bit integer range"),
        ("huge float", "1" + "0" * 400, "data[0].loss_fn_inputs.weights.data[1]", "64-bit integer range"),
        ("1e400", "1e400", "data[0].loss_fn_inputs.weights.data[1]", "finite number"),
        ("NaN", "NaN", "data[0].loss_fn_inputs.weights.data[1]", "finite number"),
    ],
)
def test_out_of_range_numbers_are_400_and_use_up_their_seq(server, quiet_log, model, name, raw_value, field, message):
    seq = _take_seq(model)
    body = Wire.forward_backward_body(model["model_id"], seq, [datum_json(TOKENS)])
    tensor = "target_tokens" if "target_tokens" in field else "weights"
    body["data"][0]["loss_fn_inputs"][tensor]["data"][1] = "__VALUE__"
    raw = json.dumps(body).replace('"__VALUE__"', raw_value).encode()
    refused = _refused(_raw(server, "forward_backward", raw), 400, field, message)
    assert refused["consumed_seq_id"] == seq
    _then_next_seq_runs(model)


def test_a_float32_beyond_its_range_is_400(server, quiet_log, model):
    seq = _take_seq(model)
    datum = datum_json(TOKENS, weights=[1.0, 1e39] + [1.0] * (len(TOKENS) - 3))
    response = model["wire"].send("forward_backward", Wire.forward_backward_body(model["model_id"], seq, [datum]))
    assert _refused(response, 400, "data[0].loss_fn_inputs.weights.data", "float32")["consumed_seq_id"] == seq
    _then_next_seq_runs(model)


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity"])
def test_sampling_temperature_must_be_finite(server, quiet_log, model, value):
    wire = model["wire"]
    sampler = wire.sampler(model["session"], seq=100 + ["NaN", "Infinity", "-Infinity"].index(value))
    raw = json.dumps(Wire.sample_body(sampler, temperature="__T__")).replace('"__T__"', value).encode()
    _refused(_raw(server, "asample", raw), 400, "sampling_params.temperature", "finite number")
    answer = wire.result(wire.post("asample", Wire.sample_body(sampler, temperature=0.0)), timeout=60)
    assert len(answer["sequences"][0]["tokens"]) == 2  # the sampler still works


def test_a_lone_surrogate_in_display_name_is_400(server, quiet_log):
    raw = b'{"display_name": "\\ud83d", "tags": []}'
    _refused(_raw(server, "create_session", raw), 400, "display_name", "surrogate")


def test_a_checkpoint_name_with_a_trailing_newline_is_refused(server, quiet_log, model):
    seq = _take_seq(model)
    response = model["wire"].send("save_weights", {"model_id": model["model_id"], "seq_id": seq, "path": "ckpt\n"})
    assert _refused(response, 400, "path", "1-128 characters")["consumed_seq_id"] == seq
    _then_next_seq_runs(model)


def test_an_unreadable_training_body_still_uses_up_its_seq(server, quiet_log, model):
    seq = _take_seq(model)
    raw = f'{{"model_id": "{model["model_id"]}", "seq_id": {seq}, "data": ['.encode()  # cut off
    assert _refused(_raw(server, "forward_backward", raw), 400, "body", "not valid JSON")
    _then_next_seq_runs(model)


def test_bad_websocket_frames_get_an_error_and_keep_the_connection(server, quiet_log, model):
    wire = model["wire"]
    url = server.base_url.replace("http", "ws") + "/ws/v1/events"
    with connect(url, additional_headers={"X-API-Key": server.api_key}, open_timeout=10) as ws:
        for frame in (
            '{"type": "subscribe_futures", "request_ids": 5}',
            "[1, 2]",
            "not json",
            b"\x00\x01",
            '{"type": "subscribe_run", "model_id": ["x"]}',
            '{"a": NaN}',
            '"\\ud800"',
        ):
            ws.send(frame)
            answer = json.loads(ws.recv(timeout=10))
            assert answer["type"] == "error" and answer["error"], (frame, answer)
        handle = wire.forward_backward(model["model_id"], _take_seq(model), [datum_json(TOKENS)])
        ws.send(json.dumps({"type": "subscribe_futures", "request_ids": [handle["request_id"]]}))
        pushed = json.loads(ws.recv(timeout=60))
        assert pushed["type"] == "future" and pushed["request_id"] == handle["request_id"]
        assert pushed["result"] == wire.result(handle)


def test_the_prompt_chunks_must_hold_token_ids(server, quiet_log, model):
    sampler = model["wire"].sampler(model["session"], seq=200)
    body = {**Wire.sample_body(sampler), "prompt": prompt_json(["a", "b"])}
    _refused(model["wire"].send("asample", body), 400, "prompt.chunks[0].tokens", "list of integers")


def test_a_malformed_form_body_gets_the_applications_answer(server, quiet_log):
    """The web server itself must not answer (a bare 400 before the key is checked)."""
    response = httpx.post(
        f"{server.base_url}/api/v1/create_session",
        content=b"--x\r\nbroken",
        headers={"Content-Type": "multipart/form-data; boundary=x"},
    )
    assert response.status_code == 401 and response.json()["error"]
