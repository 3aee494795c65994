"""Sampling requests are checked at the door like training ones: bad prompts and parameters are
400 naming the field, bad or foreign checkpoint paths are 400 / 404, and nothing is queued."""

from __future__ import annotations

import pytest

from .wire import Wire

PROMPT = [3, 320, 265, 203]


@pytest.fixture(scope="module")
def sampler(live_server_embedded):
    wire = Wire(live_server_embedded.client())
    session = wire.session()
    sampler_id = wire.post(
        "create_sampling_session", {"session_id": session, "sampling_session_seq_id": 0, "base_model": "tiny-llama"}
    )["sampling_session_id"]
    return wire, session, sampler_id


def _sample(sampler_id: str, seq_id: int) -> dict:
    return {
        "sampling_session_id": sampler_id,
        "seq_id": seq_id,
        "num_samples": 1,
        "prompt": {"chunks": [{"type": "encoded_text", "tokens": PROMPT}]},
        "sampling_params": {"max_tokens": 3},
    }


CASES = [
    ("token >= vocab", {"prompt": {"chunks": [{"type": "encoded_text", "tokens": [1, 99999]}]}}, "prompt"),
    ("empty prompt", {"prompt": {"chunks": []}}, "prompt"),
    ("prompt too long", {"prompt": {"chunks": [{"type": "encoded_text", "tokens": [5] * 600}]}}, "prompt"),
    ("max_tokens not a number", {"sampling_params": {"max_tokens": "many"}}, "sampling_params.max_tokens"),
    ("stop of mixed types", {"sampling_params": {"max_tokens": 3, "stop": ["a", 3]}}, "sampling_params.stop"),
    ("missing seq_id", {"seq_id": None}, "seq_id"),
]


@pytest.mark.parametrize("name,changes,field", CASES, ids=[c[0] for c in CASES])
def test_bad_sample_requests_are_400(sampler, name, changes, field):
    wire, _, sampler_id = sampler
    body = {k: v for k, v in {**_sample(sampler_id, 50), **changes}.items() if v is not None}
    response = wire.client.post("asample", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["field"].startswith(field) and response.json()["error"]


def test_the_seq_id_stays_free_after_rejections(sampler):
    wire, _, sampler_id = sampler
    result = wire.result(wire.post("asample", _sample(sampler_id, 50)))
    assert len(result["sequences"]) == 1 and len(result["sequences"][0]["tokens"]) <= 3


def test_bad_and_foreign_model_paths(live_server_embedded, sampler):
    wire, session, sampler_id = sampler
    body = {"session_id": session, "sampling_session_seq_id": 9}
    malformed = wire.client.post("create_sampling_session", json={**body, "model_path": "tinker:/nope"})
    assert malformed.status_code == 400 and malformed.json()["field"] == "model_path"
    unknown = wire.client.post(
        "create_sampling_session", json={**body, "model_path": f"tinker://{session}:train:0/sampler_weights/none"}
    )
    assert unknown.status_code == 404 and unknown.json()["error"]
    mallory = live_server_embedded.client(live_server_embedded.make_api_key("mallory-sampler"))
    assert mallory.post("asample", json=_sample(sampler_id, 1)).status_code == 404
    assert mallory.get(f"samplers/{sampler_id}").status_code == 404
