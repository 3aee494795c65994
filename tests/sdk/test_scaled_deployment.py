"""The SDK against the scaled deployment (PostgreSQL + Redis + a separate Dramatiq runner): the same
training loop gives the same numbers as on the embedded server, with futures pushed over the
WebSocket (no polling)."""

from __future__ import annotations

import pytest

import lorasmith
from lorasmith import AdamParams, Datum, ModelInput

from .reference import SEQUENCE

pytestmark = pytest.mark.services


def _losses(service: lorasmith.ServiceClient, steps: int = 3) -> list[float]:
    training = service.create_lora_training_client("tiny-llama", rank=8, seed=4)
    datum = Datum(model_input=ModelInput.from_ints(SEQUENCE[:-1]), loss_fn_inputs={"target_tokens": SEQUENCE[1:]})
    futures = [
        (training.forward_backward([datum]), training.optim_step(AdamParams(learning_rate=1e-2))) for _ in range(steps)
    ]
    return [fb.result(timeout=120).metrics["loss:sum"] for fb, step in futures if step.result(timeout=120)]


def test_loop_on_the_scaled_deployment_matches_the_embedded_one(live_server_redis, service):
    scaled = lorasmith.ServiceClient(base_url=live_server_redis.base_url, api_key=live_server_redis.api_key)
    scaled.transport.push_quiet_seconds = 600.0  # no reconciling checks: only the push can resolve them
    try:
        before = live_server_redis.retrieve_future_count()
        got = _losses(scaled)
        assert live_server_redis.retrieve_future_count() == before
    finally:
        scaled.close()
    assert got == pytest.approx(_losses(service), rel=1e-5)
