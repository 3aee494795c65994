"""Supervised steps on a TrainingClient: submit a step's requests, read its metrics later.

A step is `forward_backward` + `optim_step`, both submitted at once; the caller submits the next
step before reading this one's results (`StepFutures.metrics`), so the server always has work
queued. `mean_nll` turns a forward pass's logprobs into a per-token negative log-likelihood.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import lorasmith
from lorasmith import AdamParams, Datum, ForwardBackwardOutput

from .data import batch_at_step, target_weights


def mean_nll(output: ForwardBackwardOutput, datums: Sequence[Datum]) -> float:
    """-sum(logprob) / count over the targets with positive weight, all datums together."""
    total, count = 0.0, 0
    for out, datum in zip(output.loss_fn_outputs, datums):
        logprobs = out["logprobs"].tolist()
        for logprob, weight in zip(logprobs, target_weights(datum)):
            if weight > 0:
                total -= logprob
                count += 1
    return total / max(count, 1)


@dataclass
class StepFutures:
    step: int
    batch: list[Datum]
    learning_rate: float
    forward_backward: lorasmith.APIFuture[ForwardBackwardOutput]
    optim: lorasmith.APIFuture[lorasmith.OptimStepResponse]

    def metrics(self) -> dict[str, float]:
        """Waits for the step: its training NLL per token, learning rate and optimizer metrics."""
        output = self.forward_backward.result()
        optim = self.optim.result().metrics or {}
        return {
            "train/nll": mean_nll(output, self.batch),
            "learning_rate": self.learning_rate,
            **{f"optim/{k}": v for k, v in optim.items()},
        }


def submit_step(training: lorasmith.TrainingClient, step: int, batch: list[Datum], learning_rate: float) -> StepFutures:
    """Queue one cross-entropy step (no waiting)."""
    return StepFutures(
        step=step,
        batch=batch,
        learning_rate=learning_rate,
        forward_backward=training.forward_backward(batch, "cross_entropy"),
        optim=training.optim_step(AdamParams(learning_rate=learning_rate)),
    )


def train(
    training: lorasmith.TrainingClient,
    data: Sequence[Datum],
    steps: int,
    batch_size: int,
    learning_rate: Callable[[int], float],
    seed: int,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
) -> dict[str, float]:
    """`steps` pipelined steps over `data` (see `batch_at_step`); returns the last step's metrics.
    `learning_rate(step)` gives each step's rate; `on_step(step, metrics)` sees each step's metrics."""
    metrics: dict[str, float] = {}
    pending: StepFutures | None = None
    for step in range(steps + 1):
        queued = None
        if step < steps:
            batch = batch_at_step(data, min(batch_size, len(data)), step, seed)
            queued = submit_step(training, step, batch, learning_rate(step))
        if pending is not None:  # the previous step, read after the next one is queued
            metrics = pending.metrics()
            if on_step is not None:
                on_step(pending.step, metrics)
        pending = queued
    return metrics
