"""Bad input becomes a typed error naming the datum and field, and never harms other requests."""

from __future__ import annotations

import pytest
import torch

from gpu_runner import validate_forward_backward, validate_sample
from gpu_runner.errors import EngineInputError
from gpu_runner.types import Datum, ForwardBackward, OptimStep, Sample, SamplingParams

from .reference import new_adapter, random_sequence, sft_datum

GOOD = sft_datum(random_sequence(8, seed=1))


def rl_datum(n=4, **overrides):
    inputs = {"target_tokens": torch.arange(5, 5 + n), "logprobs": torch.zeros(n), "advantages": torch.ones(n)}
    inputs.update(overrides)
    return Datum(list(range(10, 10 + n)), inputs)


@pytest.mark.parametrize(
    "data,loss_fn,config,field,message",
    [
        ([GOOD], "nope", None, "loss_fn", "unknown loss_fn 'nope'"),
        ([], "cross_entropy", None, "data", "data is empty"),
        (
            [Datum([1, 2], {})],
            "cross_entropy",
            None,
            "loss_fn_inputs.target_tokens",
            "needs loss_fn_inputs.target_tokens",
        ),
        (
            [Datum([1, 2, 3], {"target_tokens": torch.tensor([1, 2])})],
            "cross_entropy",
            None,
            "loss_fn_inputs.target_tokens",
            "has 2 entries but model_input has 3 tokens",
        ),
        (
            [Datum([1, 99999], {"target_tokens": torch.tensor([1, 2])})],
            "cross_entropy",
            None,
            "model_input",
            "outside the vocabulary",
        ),
        (
            [Datum([1, 2], {"target_tokens": torch.tensor([1, 99999])})],
            "cross_entropy",
            None,
            "loss_fn_inputs.target_tokens",
            "outside the vocabulary",
        ),
        (
            [Datum([1] * 600, {"target_tokens": torch.ones(600, dtype=torch.long)})],
            "cross_entropy",
            None,
            "model_input",
            "more than the model context of 512",
        ),
        (
            [Datum([1, 2], {"target_tokens": torch.tensor([1.0, 2.0])})],
            "cross_entropy",
            None,
            "loss_fn_inputs.target_tokens",
            "must be int64",
        ),
        (
            [Datum([1, 2], {"target_tokens": torch.tensor([1, 2]), "weights": torch.ones(3)})],
            "cross_entropy",
            None,
            "loss_fn_inputs.weights",
            "has 3 entries",
        ),
        (
            [rl_datum(advantages=torch.tensor([1.0, float("nan"), 0, 0]))],
            "ppo",
            None,
            "loss_fn_inputs.advantages",
            "NaN",
        ),
        (
            [rl_datum(target_tokens=torch.ones(4, 2, dtype=torch.long))],
            "ppo",
            None,
            "loss_fn_inputs.target_tokens",
            "expected (4,)",
        ),
        ([rl_datum()], "dro", None, "loss_fn_config.beta", "dro needs loss_fn_config.beta"),
        ([rl_datum()], "ppo", {"beta": 1.0}, "loss_fn_config.beta", "is not used by ppo"),
        ([rl_datum(extra=torch.ones(4))], "ppo", None, "loss_fn_inputs.extra", "is not an input of ppo"),
        (
            [rl_datum()],
            "gspo",
            None,
            "loss_fn_inputs.sequence_ratio_mask",
            "gspo needs loss_fn_inputs.sequence_ratio_mask",
        ),
        ([rl_datum()], "stable_reinforce", None, "loss_fn", "'stable_reinforce' is not supported here: it needs"),
        ([rl_datum()], "custom", None, "loss_fn", "use forward_backward_custom"),
    ],
)
def test_forward_backward_errors_name_the_field(engine, data, loss_fn, config, field, message):
    with pytest.raises(EngineInputError) as caught:
        validate_forward_backward(engine.info, data, loss_fn, config)
    assert caught.value.field == field
    assert message in str(caught.value)


def test_datum_index_is_in_the_message(engine):
    bad = Datum([1, 2, 3], {"target_tokens": torch.tensor([1, 2])})
    with pytest.raises(EngineInputError, match=r"\(datum 1\)"):
        validate_forward_backward(engine.info, [GOOD, bad], "cross_entropy", None)


@pytest.mark.parametrize(
    "prompt,n,params,field",
    [
        ([], 1, SamplingParams(), "prompt"),
        ([1, 2], 0, SamplingParams(), "num_samples"),
        ([1, 2], 1, SamplingParams(max_tokens=0), "sampling_params.max_tokens"),
        ([1] * 500, 1, SamplingParams(max_tokens=20), "sampling_params.max_tokens"),
        ([1, 2], 1, SamplingParams(temperature=-1), "sampling_params.temperature"),
        ([1, 2], 1, SamplingParams(top_p=0), "sampling_params.top_p"),
        ([1, 2], 1, SamplingParams(top_k=0), "sampling_params.top_k"),
        ([1, 2], 1, SamplingParams(stop=[100000]), "sampling_params.stop"),
    ],
)
def test_sample_errors_name_the_field(engine, prompt, n, params, field):
    with pytest.raises(EngineInputError) as caught:
        validate_sample(engine.info, prompt, n, params)
    assert caught.value.field == field


def test_a_bad_request_does_not_disturb_its_cycle(engine):
    bystander, twin, victim = (new_adapter(engine, rank=4, seed=s) for s in (1, 1, 2))
    bad = Datum([1, 2, 3], {"target_tokens": torch.tensor([1, 2])})
    (alone, _) = engine.run_cycle([ForwardBackward(twin, [GOOD]), OptimStep(twin)])
    results = engine.run_cycle(
        [
            ForwardBackward(victim, [bad]),
            ForwardBackward(bystander, [GOOD]),
            Sample("no-such-model", [1, 2], 1, SamplingParams(max_tokens=2)),
            OptimStep(bystander),
        ]
    )
    assert results[0].category == "user" and "has 2 entries" in results[0].error
    assert results[2].category == "user" and "unknown model 'no-such-model'" in results[2].error
    assert results[1].ok and results[3].ok
    assert results[1].output.metrics["loss:sum"] == alone.output.metrics["loss:sum"]


def test_an_exception_inside_a_pass_fails_only_that_pass(engine, monkeypatch):
    adapter_id = new_adapter(engine, rank=4, seed=3)
    original = engine._forward_backward

    def broken(ops):
        raise RuntimeError("simulated device failure")

    monkeypatch.setattr(engine, "_forward_backward", broken)
    failed = engine.run_cycle(
        [ForwardBackward(adapter_id, [GOOD]), Sample(None, [1, 2, 3], 1, SamplingParams(max_tokens=2))]
    )
    assert failed[0].category == "server" and "simulated device failure" in failed[0].error
    assert failed[1].ok
    monkeypatch.setattr(engine, "_forward_backward", original)
    (ok,) = engine.run_cycle([ForwardBackward(adapter_id, [GOOD])])
    assert ok.ok


def test_a_failing_fused_pass_is_retried_one_by_one_so_only_the_culprit_fails(engine, monkeypatch):
    """As when one request's activations exhaust device memory: the others still get exactly
    what they get alone, with no gradient counted twice; an adapter that was accumulating fails
    with the pass (its gradient could be partial)."""
    good, culprit, accumulating, reference = (new_adapter(engine, rank=4, seed=s) for s in (5, 6, 7, 5))
    engine.run_cycle([ForwardBackward(accumulating, [GOOD])])
    original = engine._forward_backward

    def fails_with_the_culprit(ops):
        outputs = original(ops)  # gradients land first, as a late failure would leave them
        if any(op.adapter_id == culprit for op in ops):
            raise RuntimeError("CUDA out of memory (simulated)")
        return outputs

    monkeypatch.setattr(engine, "_forward_backward", fails_with_the_culprit)
    results = engine.run_cycle([ForwardBackward(a, [GOOD]) for a in (good, culprit, accumulating)])
    monkeypatch.setattr(engine, "_forward_backward", original)
    assert results[0].ok and "out of memory" in results[1].error and results[1].category == "server"
    assert "out of memory" in results[2].error
    assert all(p.grad is None for p in engine.adapter(culprit).parameters())
    (alone,) = engine.run_cycle([ForwardBackward(reference, [GOOD])])
    assert results[0].output.metrics["loss:sum"] == pytest.approx(alone.output.metrics["loss:sum"], rel=1e-6)
    for got, expected in zip(engine.adapter(good).parameters(), engine.adapter(reference).parameters()):
        torch.testing.assert_close(got.grad, expected.grad, rtol=1e-5, atol=1e-7)
