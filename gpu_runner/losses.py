"""Loss functions of DESIGN §5 as pure functions: per-token target logprobs + inputs -> summed loss.

p = the trainer's logprob of each target token, q = `logprobs` input (the sampler's),
A = `advantages`, r = exp(p - q). Every loss is a SUM over tokens; normalisation is the caller's job.
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


_RL_INPUTS = ("target_tokens", "logprobs", "advantages")

LOSSES: dict[str, LossSpec] = {
    "cross_entropy": LossSpec(cross_entropy, ("target_tokens",), ("weights",), allows_2d_targets=True),
    "importance_sampling": LossSpec(importance_sampling, _RL_INPUTS),
    "ppo": LossSpec(ppo, _RL_INPUTS, config_defaults=(("clip_low_threshold", 0.8), ("clip_high_threshold", 1.2))),
    "cispo": LossSpec(cispo, _RL_INPUTS, config_defaults=(("clip_low_threshold", 0.0), ("clip_high_threshold", 4.0))),
    "dro": LossSpec(dro, _RL_INPUTS, required_config=("beta",)),
}
