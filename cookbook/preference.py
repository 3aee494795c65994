"""Pairs of completions as Datums, and their sequence scores, for DPO and the reward model.

A completion's score is sum(weight * logprob) over its tokens: with `reduction="sum"` weights
(1 on the completion) it is the completion's logprob (DPO); with `"mean"` weights it is the mean
logprob per token (the reward model, so a long answer is not penalised for its length). A batch of
pairs travels as one list, chosen and rejected interleaved: [chosen_0, rejected_0, chosen_1, ...].
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

import lorasmith
from lorasmith import Datum, ForwardBackwardOutput, ModelInput

from .data import Comparison, Reduction, conversation_to_datum, target_weights
from .renderers import Message, Renderer, TrainOnWhat


def completion_datum(
    prompt: list[Message], completion: list[Message], renderer: Renderer, max_length: int, reduction: Reduction
) -> Datum:
    """prompt + completion as a Datum in which only the completion's last message is weighted."""
    return conversation_to_datum(
        prompt + completion, renderer, TrainOnWhat.LAST_ASSISTANT_MESSAGE, max_length, reduction
    )


def pair_datums(
    comparisons: Sequence[Comparison], renderer: Renderer, max_length: int, reduction: Reduction
) -> list[Datum]:
    """The interleaved chosen/rejected Datums of `comparisons`."""
    return [
        completion_datum(c.prompt, side, renderer, max_length, reduction)
        for c in comparisons
        for side in (c.chosen, c.rejected)
    ]


def full_tokens(datum: Datum) -> ModelInput:
    """The whole sequence a next-token Datum was cut from (its inputs and the last target)."""
    return ModelInput.from_ints(datum.model_input.to_ints() + datum.loss_fn_inputs["target_tokens"].tolist()[-1:])


def sampler_scores(sampler: lorasmith.SamplingClient, datums: Sequence[Datum]) -> list[float]:
    """sum(weight * logprob) of each datum's targets under `sampler`; every request is submitted
    before any is awaited. compute_logprobs gives token i's logprob at i, the Datum's target i is
    token i + 1, hence the shift by one."""
    futures = [sampler.compute_logprobs(full_tokens(d)) for d in datums]
    return [sum(w * (lp or 0.0) for w, lp in zip(target_weights(d), f.result()[1:])) for d, f in zip(datums, futures)]


def weighted_scores(datums: Sequence[Datum], logprobs: Sequence[torch.Tensor]) -> torch.Tensor:
    """(len(datums),) sum(weight * logprob) per datum, differentiable in `logprobs`."""
    return torch.stack([(lp * torch.tensor(target_weights(d))).sum() for d, lp in zip(datums, logprobs)])


def forward_scores(output: ForwardBackwardOutput, datums: Sequence[Datum]) -> torch.Tensor:
    """The same scores from a forward pass's logprobs (no gradient)."""
    return weighted_scores(datums, [out["logprobs"].to_torch().float() for out in output.loss_fn_outputs])
