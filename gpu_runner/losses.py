"""Loss functions of DESIGN §5 as pure functions: per-token target logprobs + inputs -> summed loss.

p = the trainer's logprob of each target token, q = `logprobs` input (the sampler's),
A = `advantages`, r = exp(p - q). Every loss is a SUM over tokens; normalisation is the caller's job.
Tinker's loss names this engine does not compute are in UNSUPPORTED, with what to use instead.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

Inputs = dict[str, torch.Tensor]
Config = dict[str, float]


@dataclass(frozen=True)
class LossSpec:
    fn: Callable[[torch.Tensor, Inputs, Config], torch.Tensor]
    required: tuple[str, ...]
    optional: tuple[str, ...] = ()
    config_defaults: tuple[tuple[str, float], ...] = ()
    required_config: tuple[str, ...] = ()
    allows_2d_targets: bool = False

    def config(self, given: Config | None) -> Config:
        merged = dict(self.config_defaults)
        merged.update(given or {})
        return merged


def cross_entropy(p: torch.Tensor, inputs: Inputs, config: Config) -> torch.Tensor:
    weights = inputs.get("weights")
    if weights is None:
        return -p.sum()
    return -(weights * p).sum()


def _ratio(p: torch.Tensor, inputs: Inputs) -> torch.Tensor:
    return torch.exp(p - inputs["logprobs"])


def importance_sampling(p: torch.Tensor, inputs: Inputs, config: Config) -> torch.Tensor:
    return -(_ratio(p, inputs) * inputs["advantages"]).sum()


def ppo(p: torch.Tensor, inputs: Inputs, config: Config) -> torch.Tensor:
    ratio = _ratio(p, inputs)
    advantages = inputs["advantages"]
    clipped = torch.clamp(ratio, config["clip_low_threshold"], config["clip_high_threshold"])
    return -torch.minimum(ratio * advantages, clipped * advantages).sum()


def cispo(p: torch.Tensor, inputs: Inputs, config: Config) -> torch.Tensor:
    clipped = torch.clamp(_ratio(p, inputs), config["clip_low_threshold"], config["clip_high_threshold"]).detach()
    return -(clipped * p * inputs["advantages"]).sum()


def dro(p: torch.Tensor, inputs: Inputs, config: Config) -> torch.Tensor:
    q = inputs["logprobs"]
    return -(p * inputs["advantages"] - 0.5 * config["beta"] * (p - q) ** 2).sum()


def gspo(p: torch.Tensor, inputs: Inputs, config: Config) -> torch.Tensor:
    """Group Sequence Policy Optimization (Zheng et al., 2025), in its token form: every token
    carries the datum's sequence-level ratio s = exp(mean of p - q over the tokens that
    `sequence_ratio_mask` marks) as its value and s * grad(p) as its gradient; PPO's clipped
    minimum of ratio * A is then summed over tokens. With one advantage A on the m masked tokens
    this is m times the paper's sequence objective min(s A, clip(s) A)."""
    mask = inputs["sequence_ratio_mask"]
    sequence_ratio = torch.exp(((p - inputs["logprobs"]) * mask).sum() / mask.sum().clamp(min=1.0))
    ratio = sequence_ratio.detach() * torch.exp(p - p.detach())  # value s, gradient s * dp
    advantages = inputs["advantages"]
    clipped = torch.clamp(ratio, config["clip_low_threshold"], config["clip_high_threshold"])
    return -torch.minimum(ratio * advantages, clipped * advantages).sum()


_RL_INPUTS = ("target_tokens", "logprobs", "advantages")
_CLIP = (("clip_low_threshold", 0.8), ("clip_high_threshold", 1.2))

LOSSES: dict[str, LossSpec] = {
    "cross_entropy": LossSpec(cross_entropy, ("target_tokens",), ("weights",), allows_2d_targets=True),
    "importance_sampling": LossSpec(importance_sampling, _RL_INPUTS),
    "ppo": LossSpec(ppo, _RL_INPUTS, config_defaults=_CLIP),
    "cispo": LossSpec(cispo, _RL_INPUTS, config_defaults=(("clip_low_threshold", 0.0), ("clip_high_threshold", 4.0))),
    "dro": LossSpec(dro, _RL_INPUTS, required_config=("beta",)),
    "gspo": LossSpec(gspo, (*_RL_INPUTS, "sequence_ratio_mask"), config_defaults=_CLIP),
}

UNSUPPORTED = {
    "stable_reinforce": "it needs the sampler's stability records, which this server does not keep; "
    "use importance_sampling, ppo or gspo",
    "custom": "server-side custom losses are not offered; use forward_backward_custom, which computes the loss "
    "client-side",
}


def op_loss(
    loss_fn: str, loss_fn_config: Config | None, logprobs: list[torch.Tensor], inputs: list[Inputs]
) -> torch.Tensor:
    """One operation's summed loss over its datums: `logprobs[i]` are datum i's target logprobs,
    (N,) or (N, K); `inputs[i]` its loss_fn_inputs other than the targets, on the same device."""
    spec = LOSSES[loss_fn]
    config = spec.config(loss_fn_config)
    total = torch.zeros((), device=logprobs[0].device) if logprobs else torch.zeros(())
    for p, datum_inputs in zip(logprobs, inputs):
        total = total + spec.fn(p, datum_inputs, config)
    return total
