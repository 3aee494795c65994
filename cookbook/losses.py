"""Preference losses as pure torch functions of sequence scores, for `forward_backward_custom`.

Every function takes one tensor entry per pair and returns (scalar loss, metrics); the loss is the
mean over pairs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def dpo_loss(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    reference_chosen: torch.Tensor,
    reference_rejected: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """DPO: -log sigmoid(beta * [(chosen - ref_chosen) - (rejected - ref_rejected)]), on sequence logprobs.

    Metrics: `accuracy` (implied reward of chosen above rejected), `margin` (mean implied-reward
    difference) and the mean implied rewards beta * (policy - reference) of each side."""
    chosen_reward = beta * (chosen - reference_chosen)
    rejected_reward = beta * (rejected - reference_rejected)
    margin = chosen_reward - rejected_reward
    loss = -F.logsigmoid(margin).mean()
    metrics = {
        "dpo_loss": float(loss.detach()),
        "accuracy": float((margin > 0).float().mean()),
        "margin": float(margin.detach().mean()),
        "chosen_reward": float(chosen_reward.detach().mean()),
        "rejected_reward": float(rejected_reward.detach().mean()),
    }
    return loss, metrics


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """Pairwise reward-model loss: -log sigmoid(score_chosen - score_rejected)."""
    difference = chosen - rejected
    loss = -F.logsigmoid(difference).mean()
    return loss, {"rm_loss": float(loss.detach()), "accuracy": float((difference > 0).float().mean())}
