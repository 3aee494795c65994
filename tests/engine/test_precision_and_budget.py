"""bf16 (the CUDA path, run on CPU on request) tracks fp32 training; a request far larger than one
micro-batch runs in micro-batches to the same result as the same data sent in small requests."""

from __future__ import annotations

import math

import pytest
import torch

from gpu_runner import Engine
from gpu_runner.types import AdamParams, ForwardBackward, LoraSpec, OptimStep

from .reference import random_sequence, sft_datum

SENTENCES = ["The cat sat on the mat.", "Two plus two is four.", "The sky is blue on a clear day."]


def _train(engine: Engine, steps: int) -> tuple[list[float], list[bool]]:
    engine.create_adapter("a", LoraSpec(rank=8, seed=0))
    data = [sft_datum(engine.tokenizer(s)["input_ids"]) for s in SENTENCES]
    tokens = sum(len(d.model_input) for d in data)
    losses, finite = [], []
    for _ in range(steps):
        (fb,) = engine.run_cycle([ForwardBackward("a", data)])
        assert fb.ok, fb.error
        finite.append(
            all(p.grad is not None and bool(torch.isfinite(p.grad).all()) for p in engine.adapter("a").parameters())
        )
        (step,) = engine.run_cycle([OptimStep("a", AdamParams(learning_rate=1e-3))])
        assert step.ok
        losses.append(fb.output.metrics["loss:sum"] / tokens)
    return losses, finite


def test_bf16_training_on_cpu_tracks_fp32(engine_data_dir):
    """Base weights bf16, adapter masters and Adam state fp32, LoRA matmuls in bf16: 20 steps on
    tiny-qwen3 end within 2e-2 (per-token loss) of the same run in fp32, every gradient finite."""
    fp32, _ = _train(Engine("tiny-qwen3", data_dir=engine_data_dir), 20)
    bf16_engine = Engine("tiny-qwen3", data_dir=engine_data_dir, dtype="bfloat16")
    assert bf16_engine.model.get_input_embeddings().weight.dtype == torch.bfloat16
    bf16, finite = _train(bf16_engine, 20)
    assert all(finite)
    assert all(p.dtype == torch.float32 for p in bf16_engine.adapter("a").parameters())
    assert fp32[-1] < 0.5 * fp32[0] and bf16[-1] < 0.5 * bf16[0]  # both learn (6.8 -> 2.7 per token)
    assert abs(bf16[-1] - fp32[-1]) <= 2e-2, (bf16[-1], fp32[-1])


@pytest.mark.slow
def test_a_request_of_thousands_of_datums_runs_in_micro_batches_like_small_requests(engine_data_dir):
    """2,000 datums x 16 tokens in one request (32k tokens, 32 micro-batches of 1k) give the same
    loss and gradients as four requests of 500 datums accumulated, and the engine stays usable.
    (10,000 x 16 is past the platform's per-request token budget, refused at the door.)"""
    engine = Engine("tiny-llama", data_dir=engine_data_dir, max_pass_tokens=1024)
    data = [sft_datum(random_sequence(17, seed=i)) for i in range(2_000)]
    engine.create_adapter("whole", LoraSpec(rank=4, seed=5))
    engine.create_adapter("parts", LoraSpec(rank=4, seed=5))
    (whole,) = engine.run_cycle([ForwardBackward("whole", data)])
    assert whole.ok, whole.error
    parts = engine.run_cycle([ForwardBackward("parts", data[i : i + 500]) for i in range(0, 2_000, 500)])
    assert all(r.ok for r in parts)
    total = sum(r.output.metrics["loss:sum"] for r in parts)
    assert math.isclose(whole.output.metrics["loss:sum"], total, rel_tol=1e-5)
    grads_whole = {n: t.grad for n, t in _named(engine, "whole").items()}
    for name, t in _named(engine, "parts").items():  # sums over 32k tokens: fp32 order noise ~1e-5
        torch.testing.assert_close(t.grad, grads_whole[name], rtol=1e-3, atol=1e-4)
    (after,) = engine.run_cycle([ForwardBackward("parts", data[:3], forward_only=True)])
    assert after.ok


def _named(engine: Engine, adapter_id: str) -> dict[str, torch.Tensor]:
    adapter = engine.adapter(adapter_id)
    return {f"{m}.{i}": t for m, pair in adapter.weights.items() for i, t in enumerate(pair)}
