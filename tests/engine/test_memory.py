"""Memory bookkeeping: past the budget the coldest adapters spill to disk and come back unchanged."""

from __future__ import annotations

import torch

from gpu_runner import Engine
from gpu_runner.types import AdamParams, ForwardBackward, LoraSpec, OptimStep

from .reference import engine_lora_tensors, random_sequence, sft_datum

DATA = [sft_datum(random_sequence(10, seed=4))]


def _train(engine, adapter_ids, rounds=3):
    for _ in range(rounds):
        for adapter_id in adapter_ids:  # one at a time, so the others go cold
            results = engine.run_cycle(
                [ForwardBackward(adapter_id, DATA), OptimStep(adapter_id, AdamParams(learning_rate=1e-2))]
            )
            assert all(r.ok for r in results), [r.error for r in results]
        # a pending gradient must survive eviction too
        engine.run_cycle([ForwardBackward(adapter_ids[0], DATA)])


def test_eviction_is_transparent(engine, engine_data_dir):
    one_adapter = 2 * sum(p.numel() * 4 for p in _probe(engine).parameters())
    tight = Engine(
        "tiny-llama",
        data_dir=engine_data_dir,
        memory_budget_bytes=int(1.5 * one_adapter),
        max_pass_tokens=engine.max_pass_tokens,
    )
    tight.chunk_tokens = engine.chunk_tokens  # the same arithmetic as the roomy engine, so bit for bit
    ids = ["e0", "e1", "e2"]
    for i, adapter_id in enumerate(ids):
        tight.create_adapter(adapter_id, LoraSpec(rank=4, seed=i))
        engine.create_adapter(f"roomy-{adapter_id}", LoraSpec(rank=4, seed=i))
    _train(tight, ids)
    _train(engine, [f"roomy-{i}" for i in ids])
    report = tight.memory_report()
    assert report["evictions"] > 0 and report["adapters"] == 3
    assert len(report["resident_adapters"]) < 3 and report["resident_bytes"] <= report["budget_bytes"]
    for adapter_id in ids:
        left, right = engine_lora_tensors(tight, adapter_id), engine_lora_tensors(engine, f"roomy-{adapter_id}")
        assert all(torch.equal(left[k], right[k]) for k in left)
    assert engine.adapter("roomy-e0").parameters()[1].grad is not None
    torch.testing.assert_close(
        tight.adapter("e0").parameters()[1].grad, engine.adapter("roomy-e0").parameters()[1].grad
    )


def _probe(engine):
    engine.create_adapter("probe", LoraSpec(rank=4, seed=0))
    return engine.adapter("probe")
