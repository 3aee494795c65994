"""Sampling groups of completions and turning rewarded groups into policy-gradient Datums.

GRPO-style: each prompt is sampled `group_size` times; a completion's advantage is its reward minus
its group's mean reward (no std normalisation), given to every sampled token; prompt tokens get
advantage 0. The Datums carry the sampler's logprobs, as `importance_sampling` needs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import lorasmith
from lorasmith import Datum, ForwardBackwardOutput, ModelInput, SamplingParams, TensorData

from .renderers import Message, Renderer


@dataclass(frozen=True)
class Completion:
    prompt: ModelInput
    tokens: list[int]
    logprobs: list[float]
    message: Message
    terminated: bool


def sample_groups(
    sampler: lorasmith.SamplingClient,
    renderer: Renderer,
    prompts: Sequence[list[Message]],
    group_size: int,
    params: SamplingParams,
) -> list[list[Completion]]:
    """`group_size` completions of each prompt. Every request is submitted before any is awaited,
    so the server samples them while the first answers travel back."""
    rendered = [renderer.build_generation_prompt(p) for p in prompts]
    futures = [sampler.sample(prompt, group_size, params) for prompt in rendered]
    groups = []
    for prompt, future in zip(rendered, futures):
        group = []
        for sequence in future.result().sequences:
            parsed = renderer.parse_response(sequence.tokens)
            group.append(
                Completion(prompt, sequence.tokens, list(sequence.logprobs or []), parsed.message, parsed.terminated)
            )
        groups.append(group)
    return groups


def group_advantages(rewards: Sequence[float]) -> list[float]:
    """Each reward minus the group's mean."""
    mean = sum(rewards) / len(rewards)
    return [r - mean for r in rewards]


@dataclass
class PolicyGradientBatch:
    datums: list[Datum] = field(default_factory=list)
    completion_starts: list[int] = field(default_factory=list)  # the first target index that was sampled


def completion_datum(completion: Completion, advantage: float) -> Datum:
    """inputs prompt + completion[:-1], targets shifted by one; sampled targets carry the sampler's
    logprob and the advantage, prompt targets 0 and 0."""
    if len(completion.logprobs) != len(completion.tokens):
        raise ValueError(f"{len(completion.tokens)} sampled tokens but {len(completion.logprobs)} logprobs")
    prompt = completion.prompt.to_ints()
    tokens = prompt + completion.tokens
    before = len(prompt) - 1
    return Datum(
        model_input=ModelInput.from_ints(tokens[:-1]),
        loss_fn_inputs={
            "target_tokens": TensorData(data=list(tokens[1:]), dtype="int64"),
            "logprobs": TensorData(data=[0.0] * before + completion.logprobs, dtype="float32"),
            "advantages": TensorData(data=[0.0] * before + [advantage] * len(completion.tokens), dtype="float32"),
        },
    )


def policy_gradient_batch(groups: Sequence[list[Completion]], rewards: Sequence[list[float]]) -> PolicyGradientBatch:
    """The Datums of every group whose rewards differ (a group of equal rewards teaches nothing)."""
    batch = PolicyGradientBatch()
    for group, group_rewards in zip(groups, rewards):
        advantages = group_advantages(group_rewards)
        if all(a == 0.0 for a in advantages):
            continue
        for completion, advantage in zip(group, advantages):
            if completion.tokens:
                batch.datums.append(completion_datum(completion, advantage))
                batch.completion_starts.append(completion.prompt.length - 1)
    return batch


def sample_train_kl(output: ForwardBackwardOutput, batch: PolicyGradientBatch) -> float:
    """mean(sampler logprob - trainer logprob) over sampled tokens: ~0 when sampling is on-policy."""
    total, count = 0.0, 0
    for out, datum, start in zip(output.loss_fn_outputs, batch.datums, batch.completion_starts):
        trainer = out["logprobs"].tolist()[start:]
        sampler = datum.loss_fn_inputs["logprobs"].tolist()[start:]
        total += sum(s - t for s, t in zip(sampler, trainer))
        count += len(trainer)
    return total / max(count, 1)


def reference_logprobs(reference: lorasmith.SamplingClient, completions: Sequence[Completion]) -> list[list[float]]:
    """Each completion's sampled tokens' logprobs under a frozen `reference` sampler (the SFT policy
    in RLHF), every request submitted before any is awaited. compute_logprobs scores token i at
    index i, so the completion's tokens are the ones after its prompt."""
    futures = [reference.compute_logprobs(ModelInput.from_ints(c.prompt.to_ints() + c.tokens)) for c in completions]
    return [[lp or 0.0 for lp in future.result()[c.prompt.length :]] for c, future in zip(completions, futures)]


def mean_log_ratio(completion: Completion, reference: Sequence[float]) -> float:
    """mean over the sampled tokens of log pi(token) - log pi_ref(token): the sampled estimate of
    KL(pi || pi_ref) per token (pi's logprobs are the sampler's, exact at temperature 1); 0 for an
    empty completion."""
    if len(reference) != len(completion.logprobs):
        raise ValueError(f"{len(completion.logprobs)} sampled logprobs but {len(reference)} reference ones")
    return sum(p - r for p, r in zip(completion.logprobs, reference)) / max(len(reference), 1)
