"""The SFT loop of the design doc through the SDK, sync and pipelined async, lands on exactly the
adapter the engine produces in-process; async requests run in call order."""

from __future__ import annotations

import asyncio

import pytest
import torch

from lorasmith import AdamParams, Datum, ModelInput

from .reference import LR, SEQUENCE, adapter_tensors, engine_losses

STEPS = 6


def datum() -> Datum:
    return Datum(
        model_input=ModelInput.from_ints(SEQUENCE[:-1]),
        loss_fn_inputs={"target_tokens": SEQUENCE[1:], "weights": [1.0] * (len(SEQUENCE) - 1)},
    )


def _assert_same_adapter(training, rest, expected_dir, tmp_path):
    path = training.save_weights_for_sampler("final").result().path
    got = adapter_tensors(rest.download_checkpoint(path, tmp_path / "got", progress=False))
    want = adapter_tensors(expected_dir)
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-6)


def test_sync_loop_matches_the_engine(live_server_embedded, service, tmp_path):
    expected = engine_losses(live_server_embedded.data_dir, STEPS, tmp_path / "expected")
    training = service.create_lora_training_client("tiny-llama", rank=8, seed=1)
    losses = []
    for _ in range(STEPS):
        fb = training.forward_backward([datum()], "cross_entropy")
        step = training.optim_step(AdamParams(learning_rate=LR))
        losses.append(fb.result().metrics["loss:sum"])
        assert "grad_norm:mean" in step.result().metrics
    assert losses == pytest.approx(expected, rel=1e-4)
    _assert_same_adapter(training, service.create_rest_client(), tmp_path / "expected", tmp_path)


def test_pipelined_async_loop_runs_twenty_requests_in_call_order(live_server_embedded, service, tmp_path):
    expected = engine_losses(live_server_embedded.data_dir, 10, tmp_path / "expected")
    training = service.create_lora_training_client("tiny-llama", rank=8, seed=1)

    async def loop():
        futures = []
        for _ in range(10):  # 20 requests, each submitted before any result is awaited
            futures.append(await training.forward_backward_async([datum()], "cross_entropy"))
            futures.append(await training.optim_step_async(AdamParams(learning_rate=LR)))
        return [await f for f in futures]

    results = asyncio.run(loop())
    assert [r.metrics["loss:sum"] for r in results[::2]] == pytest.approx(expected, rel=1e-4)
    _assert_same_adapter(training, service.create_rest_client(), tmp_path / "expected", tmp_path)


def test_big_batches_are_chunked_and_merged(live_server_embedded, service, monkeypatch):
    import lorasmith.training

    monkeypatch.setattr(lorasmith.training, "MAX_CHUNK_DATUMS", 2)
    training = service.create_lora_training_client("tiny-llama", rank=8, seed=1)
    data = [datum() for _ in range(5)]
    chunked = training.forward(data).result()
    monkeypatch.setattr(lorasmith.training, "MAX_CHUNK_DATUMS", 1024)
    whole = training.forward(data).result()
    assert len(chunked.loss_fn_outputs) == 5
    assert chunked.metrics["loss:sum"] == pytest.approx(whole.metrics["loss:sum"], rel=1e-5)
