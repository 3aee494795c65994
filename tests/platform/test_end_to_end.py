"""TINKER_WIRE.md §12 over plain HTTP, on the embedded stack and on PostgreSQL + Redis + a real
Dramatiq runner process: training lowers the loss exactly as the in-process engine does, and the
downloaded files load in `peft` with the service's numbers."""

from __future__ import annotations

import pytest

from .flow import SEQUENCE, engine_losses, minimal_flow, peft_logprobs
from .wire import Wire


def _check(server, tmp_path):
    outcome = minimal_flow(server, tmp_path)
    losses = outcome["losses"]
    assert losses[-1] < losses[0]
    assert losses == pytest.approx(engine_losses(server.data_dir), rel=1e-4)
    prompt = SEQUENCE[:6]
    wire = Wire(server.client())
    sampler = wire.post(
        "create_sampling_session",
        {
            "session_id": outcome["session"],
            "sampling_session_seq_id": 1,
            "model_path": f"tinker://{outcome['model_id']}/sampler_weights/s1",
        },
    )["sampling_session_id"]
    service = wire.result(
        wire.post(
            "asample",
            {
                "sampling_session_id": sampler,
                "seq_id": 0,
                "num_samples": 1,
                "prompt_logprobs": True,
                "prompt": {"chunks": [{"type": "encoded_text", "tokens": prompt}]},
                "sampling_params": {"max_tokens": 1},
            },
        )
    )
    assert service["prompt_logprobs"][1:] == pytest.approx(
        peft_logprobs(server.data_dir, outcome["download"], prompt), abs=1e-4
    )


def test_minimal_flow_embedded(live_server_embedded, tmp_path):
    _check(live_server_embedded, tmp_path)


@pytest.mark.services
def test_minimal_flow_postgres_redis_dramatiq(live_server_redis, tmp_path):
    _check(live_server_redis, tmp_path)
