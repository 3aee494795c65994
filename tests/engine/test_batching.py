"""One cycle mixing adapters must give each exactly what it gets alone; gradients accumulate."""

from __future__ import annotations

import torch

from gpu_runner.types import AdamParams, ForwardBackward, OptimStep

from .reference import engine_lora_tensors, new_adapter, random_sequence, sft_datum

ADAM = AdamParams(learning_rate=1e-2)
SPECS = [
    dict(rank=2, alpha=4, seed=1),
    dict(rank=4, alpha=32, seed=2, train_unembed=False),
    dict(rank=8, alpha=16, seed=3, train_attn=False),
]
LENGTHS = [(6, 11), (17,), (9, 3, 13)]


def _data(i: int):
    return [sft_datum(random_sequence(n + 1, seed=10 * i + j)) for j, n in enumerate(LENGTHS[i])]


def test_mixed_cycle_equals_each_adapter_alone(engine):
    alone = [new_adapter(engine, **spec) for spec in SPECS]
    mixed = [new_adapter(engine, **spec) for spec in SPECS]
    for _ in range(2):
        solo_results = []
        for i, adapter_id in enumerate(alone):
            fb, step = engine.run_cycle([ForwardBackward(adapter_id, _data(i)), OptimStep(adapter_id, ADAM)])
            solo_results.append(fb.output)
        results = engine.run_cycle(
            [ForwardBackward(a, _data(i)) for i, a in enumerate(mixed)] + [OptimStep(a, ADAM) for a in mixed]
        )
        assert all(r.ok for r in results), [r.error for r in results]
        for solo, batched in zip(solo_results, results[:3]):
            assert (
                batched.output.metrics["loss:sum"] == solo.metrics["loss:sum"]
                or abs(batched.output.metrics["loss:sum"] - solo.metrics["loss:sum"]) < 1e-4
            )
            for a, b in zip(solo.loss_fn_outputs, batched.output.loss_fn_outputs):
                torch.testing.assert_close(b["logprobs"], a["logprobs"], rtol=1e-5, atol=1e-5)
    for a, b in zip(alone, mixed):
        left, right = engine_lora_tensors(engine, a), engine_lora_tensors(engine, b)
        assert left.keys() == right.keys()
        for name in left:
            # packed rows change float summation order; Adam turns that into ~1e-6 differences
            torch.testing.assert_close(right[name], left[name], rtol=1e-4, atol=1e-5)


def test_rows_touch_only_their_own_adapter(engine):
    busy, idle = new_adapter(engine, rank=4, seed=5), new_adapter(engine, rank=4, seed=6)
    (fb,) = engine.run_cycle([ForwardBackward(busy, _data(0))])
    assert fb.ok
    assert all(p.grad is not None for p in engine.adapter(busy).parameters())
    assert all(p.grad is None for p in engine.adapter(idle).parameters())


def test_two_forward_backwards_equal_one_on_the_concatenation(engine):
    split, joined = new_adapter(engine, rank=4, seed=9), new_adapter(engine, rank=4, seed=9)
    first, second = _data(2)[:2], _data(2)[2:]
    for _ in range(2):
        r1 = engine.run_cycle([ForwardBackward(split, first), ForwardBackward(split, second), OptimStep(split, ADAM)])
        r2 = engine.run_cycle([ForwardBackward(joined, first + second), OptimStep(joined, ADAM)])
        assert all(r.ok for r in r1 + r2)
        assert (
            abs(r1[0].output.metrics["loss:sum"] + r1[1].output.metrics["loss:sum"] - r2[0].output.metrics["loss:sum"])
            < 1e-3
        )
    left, right = engine_lora_tensors(engine, split), engine_lora_tensors(engine, joined)
    for name in left:
        torch.testing.assert_close(left[name], right[name], rtol=1e-4, atol=1e-6)


def test_forward_only_accumulates_nothing(engine):
    adapter_id = new_adapter(engine, rank=4, seed=12)
    (out,) = engine.run_cycle([ForwardBackward(adapter_id, _data(1), forward_only=True)])
    assert out.ok and out.output.metrics["loss:sum"] > 0
    assert all(p.grad is None for p in engine.adapter(adapter_id).parameters())
