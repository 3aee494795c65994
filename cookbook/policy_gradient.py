"""The GRPO-style policy-gradient loop that `rl` (a program grades) and `rlhf` (a reward model
grades) share; only how a group of completions is scored differs, so that is a parameter.

Each step samples `group_size` completions of a few prompts from the current policy (a sampler on
a snapshot of the weights), scores them, and queues `forward_backward(..., loss_fn)`, `optim_step`
and the next step's snapshot together, so the server runs them back to back; the step's metrics are
read while the next policy is being sampled.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import lorasmith
from lorasmith import AdamParams, SamplingParams

from .data import batch_at_step
from .metrics import MetricsLogger
from .renderers import Message, Renderer
from .rollouts import Completion, policy_gradient_batch, sample_groups, sample_train_kl

# scores(prompt indices, their groups of completions) -> one reward per completion, per group
ScoreGroups = Callable[[list[int], list[list[Completion]]], list[list[float]]]


@dataclass(frozen=True)
class LoopConfig:
    steps: int
    prompts_per_step: int
    group_size: int
    max_tokens: int
    temperature: float
    learning_rate: float
    seed: int
    loss_fn: str = "importance_sampling"  # or "ppo" (clipped, for several updates per sample)


def run_policy_gradient(
    training: lorasmith.TrainingClient,
    renderer: Renderer,
    prompts: Sequence[list[Message]],
    score: ScoreGroups,
    config: LoopConfig,
    logger: MetricsLogger,
) -> tuple[lorasmith.SamplingClient, list[float]]:
    """`config.steps` RL steps on `training`; returns a sampler on the final policy and each step's
    mean reward of its samples (before that step's update)."""
    indices = list(range(len(prompts)))
    stop = renderer.get_stop_sequences()
    sampler = training.save_weights_and_get_sampling_client()
    step_rewards: list[float] = []
    for step in range(config.steps):
        chosen = batch_at_step(indices, min(config.prompts_per_step, len(indices)), step, config.seed)
        params = SamplingParams(
            max_tokens=config.max_tokens,
            temperature=config.temperature,
            stop=stop,
            seed=config.seed * 10_007 + step,
        )
        groups = sample_groups(sampler, renderer, [prompts[i] for i in chosen], config.group_size, params)
        rewards = score(chosen, groups)
        batch = policy_gradient_batch(groups, rewards)
        forward_backward = None
        if batch.datums:
            forward_backward = training.forward_backward(batch.datums, config.loss_fn)
            training.optim_step(AdamParams(learning_rate=config.learning_rate))
        sampler = training.save_weights_and_get_sampling_client()  # the next policy, queued after the update
        flat = [r for group in rewards for r in group]
        metrics = {
            "reward/mean": sum(flat) / len(flat),
            "groups_trained": sum(len(set(group)) > 1 for group in rewards),
            "datums": len(batch.datums),
        }
        if forward_backward is not None:
            metrics["kl_sample_train"] = sample_train_kl(forward_backward.result(), batch)
        step_rewards.append(metrics["reward/mean"])
        logger.log(step, metrics)
    return sampler, step_rewards
