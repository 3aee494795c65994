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


def _targets(rows: list, dtype: str = "int64", shape: list[int] | None = None) -> dict:
    flat = [x for row in rows for x in row] if rows and isinstance(rows[0], list) else rows
    default_shape = [len(rows), len(rows[0])] if rows and isinstance(rows[0], list) else [len(rows)]
    return {"data": flat, "dtype": dtype, "shape": shape or default_shape}


CASES = [
    ("token >= vocab", {"prompt": {"chunks": [{"type": "encoded_text", "tokens": [1, 99999]}]}}, "prompt"),
    ("empty prompt", {"prompt": {"chunks": []}}, "prompt"),
    ("prompt too long", {"prompt": {"chunks": [{"type": "encoded_text", "tokens": [5] * 600}]}}, "prompt"),
    ("max_tokens not a number", {"sampling_params": {"max_tokens": "many"}}, "sampling_params.max_tokens"),
    ("stop of mixed types", {"sampling_params": {"max_tokens": 3, "stop": ["a", 3]}}, "sampling_params.stop"),
    ("missing seq_id", {"seq_id": None}, "seq_id"),
    # target_prompt_logprobs: int64 [len(prompt) - 1, K], token ids or -1
    ("targets of floats", {"target_prompt_logprobs": _targets([[1.5]] * 3, "float32")}, "target_prompt_logprobs"),
    ("targets of wrong rows", {"target_prompt_logprobs": _targets([[1]] * 2)}, "target_prompt_logprobs"),
    ("targets 1-D", {"target_prompt_logprobs": _targets([1, 2, 3])}, "target_prompt_logprobs"),
    ("target outside vocab", {"target_prompt_logprobs": _targets([[1], [99999], [2]])}, "target_prompt_logprobs"),
    ("target below -1", {"target_prompt_logprobs": _targets([[1], [-2], [2]])}, "target_prompt_logprobs"),
    (
        "targets CSR col out of range",
        {
            "target_prompt_logprobs": {
                **_targets([5], shape=[3, 2]),
                "sparse_crow_indices": [0, 1, 1, 1],
                "sparse_col_indices": [2],
            }
        },
        "target_prompt_logprobs.sparse_col_indices",
    ),
    (
        "targets CSR too few rows",
        {
            "target_prompt_logprobs": {
                **_targets([5], shape=[3, 2]),
                "sparse_crow_indices": [0, 1],
                "sparse_col_indices": [0],
            }
        },
        "target_prompt_logprobs.sparse_crow_indices",
    ),
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


def test_target_prompt_logprobs_sparse_equals_dense(sampler):
    """Row i scores prompt position i + 1; CSR leaves -1 (nothing asked, answered 0.0) in unlisted cells."""
    wire, _, sampler_id = sampler
    dense_rows = [[PROMPT[i + 1], -1] for i in range(len(PROMPT) - 1)]
    dense = wire.result(
        wire.post("asample", {**_sample(sampler_id, 60), "target_prompt_logprobs": _targets(dense_rows)})
    )
    sparse_body = {
        "data": PROMPT[1:],
        "dtype": "int64",
        "shape": [len(PROMPT) - 1, 2],
        "sparse_crow_indices": list(range(len(PROMPT))),
        "sparse_col_indices": [0] * (len(PROMPT) - 1),
    }
    body = {**_sample(sampler_id, 61), "target_prompt_logprobs": sparse_body, "prompt_logprobs": True}
    sparse = wire.result(wire.post("asample", body))
    assert sparse["target_prompt_logprobs"] == dense["target_prompt_logprobs"]
    assert sparse["target_prompt_logprobs"]["shape"] == [len(PROMPT) - 1, 2]
    values = sparse["target_prompt_logprobs"]["data"]
    assert values[0::2] == pytest.approx(sparse["prompt_logprobs"][1:], abs=1e-6)
    assert values[1::2] == [0.0] * (len(PROMPT) - 1)


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
