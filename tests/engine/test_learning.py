"""A LoRA run on tiny-llama learns: 30 SFT steps halve the loss on a small fixed task."""

from __future__ import annotations

from gpu_runner.types import AdamParams, ForwardBackward, OptimStep

from .reference import new_adapter, sft_datum


def test_thirty_sft_steps_halve_the_loss(engine):
    sentences = ["The cat sat on the mat.", "Two plus two is four.", "The sky is blue on a clear day."]
    data = [sft_datum(engine.tokenizer(s)["input_ids"]) for s in sentences]
    adapter_id = new_adapter(engine, rank=8, seed=0)
    losses = []
    for _ in range(30):
        fb, step = engine.run_cycle(
            [ForwardBackward(adapter_id, data), OptimStep(adapter_id, AdamParams(learning_rate=1e-2))]
        )
        assert fb.ok and step.ok
        losses.append(fb.output.metrics["loss:sum"])
    assert losses[-1] < 0.5 * losses[0], losses
