"""Every loss against a plain single-adapter PEFT + PyTorch loop: loss, per-token logprobs and the
adapter after 3 AdamW steps (with weight decay and gradient clipping) must match."""

from __future__ import annotations

import pytest
import torch

from gpu_runner.losses import LOSSES
from gpu_runner.types import AdamParams, Datum, ForwardBackward, OptimStep

from .reference import engine_lora_tensors, new_adapter, peft_reference, random_sequence, reference_target_logprobs

# eps 1e-6: with eps ~0 Adam maps a gradient that is pure float noise to a full +-lr step
ADAM = AdamParams(learning_rate=5e-3, beta1=0.9, beta2=0.95, eps=1e-6, weight_decay=0.1, grad_clip_norm=0.5)


def reference_loss(name: str, p: torch.Tensor, inputs: dict, config: dict) -> torch.Tensor:
    """DESIGN §5, written out independently of gpu_runner.losses."""
    if name == "cross_entropy":
        return -(inputs["weights"] * p).sum()
    q, adv = inputs["logprobs"], inputs["advantages"]
    ratio = torch.exp(p - q)
    if name == "importance_sampling":
        return -(ratio * adv).sum()
    if name == "ppo":
        lo, hi = config.get("clip_low_threshold", 0.8), config.get("clip_high_threshold", 1.2)
        return -torch.min(ratio * adv, torch.clamp(ratio, lo, hi) * adv).sum()
    if name == "cispo":
        lo, hi = config.get("clip_low_threshold", 0.0), config.get("clip_high_threshold", 4.0)
        return -(torch.clamp(ratio, lo, hi).detach() * p * adv).sum()
    if name == "dro":
        return -(p * adv - 0.5 * config["beta"] * (p - q) ** 2).sum()
    if name == "gspo":  # the paper's sequence objective, times the m masked tokens (one advantage on them)
        mask = inputs["sequence_ratio_mask"]
        lo, hi = config.get("clip_low_threshold", 0.8), config.get("clip_high_threshold", 1.2)
        s = torch.exp(((p - q) * mask).sum() / mask.sum())
        a = adv[mask.bool()][0]
        return -mask.sum() * torch.min(s * a, torch.clamp(s, lo, hi) * a)
    raise AssertionError(name)


def make_data(loss_fn: str, two_d: bool = False) -> list[Datum]:
    data = []
    for i, length in enumerate((9, 14)):
        seq = random_sequence(length + 1, seed=100 + i)
        n = length
        g = torch.Generator().manual_seed(7 + i)
        if two_d:
            targets = torch.stack(
                [
                    torch.tensor(seq[1:]),
                    torch.randint(5, 900, (n,), generator=g),
                    torch.randint(5, 900, (n,), generator=g),
                ],
                dim=1,
            )
            inputs = {"target_tokens": targets, "weights": torch.rand(n, 3, generator=g)}
        elif loss_fn == "cross_entropy":
            inputs = {"target_tokens": torch.tensor(seq[1:]), "weights": torch.rand(n, generator=g) + 0.5}
        elif loss_fn == "gspo":
            # a prompt (mask 0, advantage 0) then a completion sharing one advantage; the two datums'
            # sampler logprobs sit on either side of the truth, so one sequence ratio is clipped
            completion = torch.arange(n) >= 3
            inputs = {
                "target_tokens": torch.tensor(seq[1:]),
                "logprobs": torch.full((n,), (-7.4, -6.2)[i]),
                "advantages": torch.where(completion, (1.5, 0.7)[i], 0.0),
                "sequence_ratio_mask": completion.float(),
            }
        else:
            # sampler logprobs around the truth (~ -6.8 for a random tiny model) so ratios straddle the clip range
            inputs = {
                "target_tokens": torch.tensor(seq[1:]),
                "logprobs": -6.8 + 0.4 * torch.randn(n, generator=g),
                "advantages": torch.randn(n, generator=g),
            }
        data.append(Datum(seq[:-1], inputs))
    return data


CASES = [
    ("cross_entropy", None, False),
    ("cross_entropy", None, True),
    ("importance_sampling", None, False),
    ("ppo", {"clip_low_threshold": 0.9, "clip_high_threshold": 1.1}, False),
    ("cispo", {"clip_low_threshold": 0.5, "clip_high_threshold": 1.5}, False),
    ("dro", {"beta": 0.3}, False),
    ("gspo", {"clip_low_threshold": 0.9, "clip_high_threshold": 1.1}, False),
]


@pytest.mark.parametrize("loss_fn,config,two_d", CASES, ids=[f"{c[0]}{'-2d' if c[2] else ''}" for c in CASES])
def test_engine_matches_peft_reference(engine, tmp_path, loss_fn, config, two_d):
    adapter_id = new_adapter(engine, rank=4, alpha=8, seed=11)
    data = make_data(loss_fn, two_d)
    reference = peft_reference(engine, adapter_id, tmp_path / "init")
    params = [p for p in reference.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        params, lr=ADAM.learning_rate, betas=(ADAM.beta1, ADAM.beta2), eps=ADAM.eps, weight_decay=ADAM.weight_decay
    )
    for _ in range(3):
        fb, step = engine.run_cycle([ForwardBackward(adapter_id, data, loss_fn, config), OptimStep(adapter_id, ADAM)])
        assert fb.ok and step.ok, fb.error or step.error

        total = torch.zeros(())
        for datum, out in zip(data, fb.output.loss_fn_outputs):
            p = reference_target_logprobs(reference, datum.model_input, datum.loss_fn_inputs["target_tokens"])
            torch.testing.assert_close(out["logprobs"], p.detach(), rtol=1e-4, atol=1e-5)
            total = total + reference_loss(loss_fn, p, datum.loss_fn_inputs, config or {})
        assert fb.output.metrics["loss:sum"] == pytest.approx(float(total.detach()), rel=1e-4, abs=1e-4)
        total.backward()
        torch.nn.utils.clip_grad_norm_(params, ADAM.grad_clip_norm)
        optimizer.step()
        optimizer.zero_grad()

    expected = {n: p.detach() for n, p in reference.named_parameters() if p.requires_grad}
    actual = engine_lora_tensors(engine, adapter_id)
    assert set(actual) == set(expected)
    for name in expected:
        # atol is 1% of one Adam step (lr): Adam divides by sqrt(v), so float noise in a near-zero
        # gradient element grows to ~1e-5 absolute, while a real error moves elements by ~lr per step.
        torch.testing.assert_close(actual[name], expected[name], rtol=1e-4, atol=0.01 * ADAM.learning_rate)
    assert any(not torch.equal(t, torch.zeros_like(t)) for n, t in actual.items() if "lora_B" in n)


@pytest.mark.parametrize(
    "sampler_shift,advantage,clipped",
    [(0.02, 1.0, False), (-0.5, 1.0, True), (-0.5, -1.0, False)],
    ids=["inside-the-clip", "above-the-clip-positive-advantage", "above-the-clip-negative-advantage"],
)
def test_gspo_has_the_value_and_gradient_of_the_sequence_objective(sampler_shift, advantage, clipped):
    """On plain tensors, each branch of the clip: GSPO's token form against the paper's sequence
    objective (ratio exp(mean(p - q)) over the masked tokens)."""
    p_values = torch.tensor([-1.0, -2.5, -0.7, -3.1, -1.9])
    mask = torch.tensor([0.0, 1.0, 1.0, 1.0, 1.0])
    inputs = {
        "logprobs": p_values + sampler_shift,  # s = exp(-shift)
        "advantages": mask * advantage,
        "sequence_ratio_mask": mask,
    }
    config = {"clip_low_threshold": 0.9, "clip_high_threshold": 1.1}
    ours = p_values.clone().requires_grad_()
    theirs = p_values.clone().requires_grad_()
    loss = LOSSES["gspo"].fn(ours, inputs, LOSSES["gspo"].config(config))
    expected = reference_loss("gspo", theirs, inputs, config)
    loss.backward()
    expected.backward()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    torch.testing.assert_close(ours.grad, theirs.grad)
    assert bool((ours.grad == 0).all()) is clipped
