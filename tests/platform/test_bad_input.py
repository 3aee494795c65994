"""Bad input is answered 4xx with a JSON body naming the field, before any work is stored, and
leaves earlier accepted work intact. A refused training request still uses up its seq_id, so the
model's later requests run (Tinker's SDK has moved on to the next seq)."""

from __future__ import annotations

import pytest

from .wire import Wire, datum_json, tensor

GOOD = [3, 320, 265, 203, 44, 538, 83, 685, 4]


def _datum(**changes) -> dict:
    datum = datum_json(GOOD)
    for key, value in changes.items():
        if key == "tokens":
            datum["model_input"]["chunks"][0]["tokens"] = value
        else:
            datum["loss_fn_inputs"][key] = value
    return datum


CASES = [
    ("unknown loss", {"loss_fn": "nope"}, "loss_fn", "unknown loss_fn 'nope'"),
    ("missing loss input", {"loss_fn": "ppo"}, "data[0].loss_fn_inputs.logprobs", "ppo needs loss_fn_inputs.logprobs"),
    (
        "length mismatch",
        {"data": [_datum(weights=tensor([1.0] * 3, "float32"))]},
        "data[0].loss_fn_inputs.weights",
        "has 3 entries but model_input has 8 tokens",
    ),
    (
        "token >= vocab",
        {"data": [_datum(tokens=[1, 2, 3, 99999, 5, 6, 7, 8])]},
        "data[0].model_input",
        "outside the vocabulary",
    ),
    ("too long", {"data": [datum_json([5] * 700)]}, "data[0].model_input", "more than the model context of 512"),
    (
        "bad dtype",
        {"data": [_datum(target_tokens={"data": GOOD[1:], "dtype": "int32", "shape": [8]})]},
        "data[0].loss_fn_inputs.target_tokens.dtype",
        "dtype must be one of",
    ),
    (
        "bad shape",
        {"data": [_datum(weights={"data": [1.0] * 8, "dtype": "float32", "shape": [3, 3]})]},
        "data[0].loss_fn_inputs.weights.shape",
        "does not match 8 values",
    ),
    ("missing seq_id", {"seq_id": None}, "seq_id", "seq_id is required"),
    ("unknown config key", {"loss_fn_config": {"beta": 1.0}}, "loss_fn_config.beta", "is not used by cross_entropy"),
]


@pytest.fixture(scope="module")
def accepted(live_server_embedded):
    """A model with one accepted request, which every bad request below must leave alone."""
    wire = Wire(live_server_embedded.client())
    model_id = wire.model(wire.session(), seed=9)
    return wire, model_id, wire.forward_backward(model_id, 1, [datum_json(GOOD)])


@pytest.mark.parametrize(
    "index,name,changes,field,message", [(i, *c) for i, c in enumerate(CASES)], ids=[c[0] for c in CASES]
)
def test_forward_backward_rejects_bad_input(accepted, index, name, changes, field, message):
    wire, model_id, _ = accepted
    body = {
        "model_id": model_id,
        "seq_id": 2 + index,
        "data": [datum_json(GOOD)],
        "loss_fn": "cross_entropy",
        **changes,
    }
    response = wire.client.post("forward_backward", json={k: v for k, v in body.items() if v is not None})
    assert response.status_code == 400
    assert response.json()["field"] == field and message in response.json()["error"]


def test_a_refused_request_uses_up_its_seq_and_later_work_runs(live_server_embedded, accepted):
    wire, _, first = accepted
    model_id = wire.model(wire.session(), seed=9)
    waiting = wire.forward_backward(model_id, 3, [datum_json(GOOD)])  # arrives early: waits for seq 1 and 2
    bad = {"model_id": model_id, "seq_id": 1, "data": [datum_json(GOOD)], "loss_fn": "nope"}
    refused = wire.client.post("forward_backward", json=bad)
    assert refused.status_code == 400 and refused.json()["consumed_seq_id"] == 1
    bad_step = wire.client.post(
        "optim_step", json={"model_id": model_id, "seq_id": 2, "adam_params": {"learning_rate": -1}}
    )
    assert bad_step.status_code == 400 and bad_step.json()["consumed_seq_id"] == 2
    other_optimizer = wire.client.post(
        "optim_step",
        json={"model_id": model_id, "seq_id": 90, "optimizer_params": {"type": "sgd", "learning_rate": 0.1}},
    )
    assert other_optimizer.status_code == 400 and other_optimizer.json()["field"] == "optimizer_params"
    # the early arrival ran on the untouched adapter: same loss as the other model's first request (same seed)
    assert wire.result(waiting)["metrics"]["loss:sum"] == pytest.approx(wire.result(first)["metrics"]["loss:sum"])
    # a repeat of a refused seq gets the same refusal, even with a now-valid body: the seq is spent
    repeat = wire.client.post("forward_backward", json={**bad, "loss_fn": "cross_entropy"})
    assert repeat.status_code == 400 and repeat.json() == refused.json()
    # a request with no readable seq_id uses up nothing
    no_seq = wire.client.post("forward_backward", json={"model_id": model_id, "data": [datum_json(GOOD)]})
    assert no_seq.status_code == 400 and "consumed_seq_id" not in no_seq.json()
    later = wire.forward_backward(model_id, 4, [datum_json(GOOD)])
    assert wire.result(later)["metrics"]["loss:sum"] == pytest.approx(wire.result(first)["metrics"]["loss:sum"])


def test_other_classes(live_server_embedded, accepted):
    wire, model_id, _ = accepted
    bad_path = wire.client.post("load_weights", json={"model_id": model_id, "seq_id": 100, "path": "tinker://x/y"})
    assert bad_path.status_code == 400 and bad_path.json()["field"] == "path"
    big = wire.client.post(
        "forward_backward", content=b"{" + b" " * (5 * 1024 * 1024) + b"}", headers={"Content-Type": "application/json"}
    )
    assert big.status_code == 413 and big.json()["field"] == "body"
    not_json = wire.client.post("create_session", content=b"{nope", headers={"Content-Type": "application/json"})
    assert not_json.status_code == 400 and "not valid JSON" in not_json.json()["error"]
    unknown_model = wire.client.post(
        "create_model", json={"session_id": wire.session(), "model_seq_id": 0, "base_model": "gpt-17"}
    )
    assert unknown_model.status_code == 400 and unknown_model.json()["field"] == "base_model"
    sampler = wire.post(
        "create_sampling_session",
        {"session_id": wire.session(), "sampling_session_seq_id": 0, "base_model": "tiny-llama"},
    )["sampling_session_id"]
    bad_sample = wire.client.post(
        "asample",
        json={
            "sampling_session_id": sampler,
            "seq_id": 0,
            "prompt": {"chunks": [{"type": "encoded_text", "tokens": [1]}]},
            "sampling_params": {"max_tokens": 4, "top_p": 0},
        },
    )
    assert bad_sample.status_code == 400 and bad_sample.json()["field"] == "sampling_params.top_p"
    # user_metadata maps strings to strings: Tinker's SDK could not list a run holding a number
    for path, body in [
        ("create_session", {"user_metadata": {"lr": 0.001}}),
        (
            "create_model",
            {"session_id": wire.session(), "model_seq_id": 1, "base_model": "tiny-llama", "user_metadata": {"n": 1}},
        ),
        ("save_weights", {"model_id": model_id, "seq_id": 101, "path": "m", "user_metadata": {"step": 3}}),
    ]:
        refused = wire.client.post(path, json=body)
        assert refused.status_code == 400, (path, refused.text)
        assert refused.json()["field"].startswith("user_metadata.") and "must be a string" in refused.json()["error"]


def test_missing_or_bad_key_is_401(live_server_embedded):
    import httpx

    base = f"{live_server_embedded.base_url}/api/v1"
    for headers in ({}, {"X-API-Key": "tml-wrong"}):
        for path in ("create_session", "retrieve_future"):
            response = httpx.post(f"{base}/{path}", json={"request_id": "x"}, headers=headers)
            assert response.status_code == 401 and response.json()["error"]
