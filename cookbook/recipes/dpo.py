"""Direct preference optimisation on comparison pairs, through `forward_backward_custom`.

    python -m cookbook.recipes.dpo --base-url http://127.0.0.1:8000 --api-key tml-...

The reference model is a frozen sampler on the starting weights (a snapshot taken before the first
step); its sequence logprobs of every chosen and rejected completion are computed once, up front,
with `compute_logprobs`. Each step sends a batch of pairs, chosen and rejected interleaved, with
the DPO loss (`cookbook.losses.dpo_loss`) as a custom loss on the policy's logprobs; the next step
is queued before this one's metrics are read. Preference accuracy (the implied reward of the chosen
completion above the rejected one's) is measured on all training and held-out pairs before and
after training.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

import lorasmith
from lorasmith import AdamParams, Datum

from ..cli import DATA_DIR, RunConfig, as_metadata, connect, log_dir_of, main, run_metadata
from ..data import Comparison, batch_at_step, load_comparisons, split_held_out
from ..losses import dpo_loss
from ..metrics import MetricsLogger
from ..preference import forward_scores, pair_datums, sampler_scores, weighted_scores
from ..renderers import Renderer, get_renderer
from ..schedules import learning_rate_at

RECIPE = "dpo"


@dataclass
class Config(RunConfig):
    data: str = str(DATA_DIR / "preferences.jsonl")
    held_out_fraction: float = 0.2
    max_length: int = 256
    batch_size: int = 8  # pairs
    steps: int = 20
    learning_rate: float = 1e-3
    lr_schedule: str = "linear"
    beta: float = 0.1
    init_state: str = ""  # a training checkpoint (tinker://.../weights/...) to start from; default: the base model


@dataclass(frozen=True)
class Pair:
    chosen: Datum
    rejected: Datum
    reference_chosen: float
    reference_rejected: float


def reference_pairs(
    sampler: lorasmith.SamplingClient, comparisons: Sequence[Comparison], renderer: Renderer, max_length: int
) -> list[Pair]:
    """The pairs' Datums with their sequence logprobs under the frozen reference `sampler`."""
    datums = pair_datums(comparisons, renderer, max_length, "sum")
    scores = sampler_scores(sampler, datums)
    return [Pair(datums[i], datums[i + 1], scores[i], scores[i + 1]) for i in range(0, len(datums), 2)]


def _reference(pairs: Sequence[Pair]) -> torch.Tensor:
    return torch.tensor([s for p in pairs for s in (p.reference_chosen, p.reference_rejected)])


def dpo_loss_fn(pairs: Sequence[Pair], beta: float):
    """The custom loss of a batch of `pairs` sent as [chosen_0, rejected_0, chosen_1, ...]."""
    reference = _reference(pairs)

    def loss_fn(data: list[Datum], logprobs: list[torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        scores = weighted_scores(data, logprobs)  # (2 * pairs,)
        return dpo_loss(scores[0::2], scores[1::2], reference[0::2], reference[1::2], beta)

    return loss_fn


def preference_accuracy(training: lorasmith.TrainingClient, pairs: Sequence[Pair], beta: float) -> dict[str, float]:
    """DPO's metrics of the policy on `pairs` (a forward pass, no gradient)."""
    data = [d for p in pairs for d in (p.chosen, p.rejected)]
    scores = forward_scores(training.forward(data).result(), data)
    reference = _reference(pairs)
    return dpo_loss(scores[0::2], scores[1::2], reference[0::2], reference[1::2], beta)[1]


def train_dpo(
    training: lorasmith.TrainingClient, pairs: Sequence[Pair], config: Config, logger: MetricsLogger
) -> dict[str, float]:
    """`config.steps` pipelined DPO steps; returns the last step's metrics."""
    batch_size = min(config.batch_size, len(pairs))
    metrics: dict[str, float] = {}
    pending = None
    for step in range(config.steps + 1):
        queued = None
        if step < config.steps:
            batch = batch_at_step(pairs, batch_size, step, config.seed)
            data = [d for p in batch for d in (p.chosen, p.rejected)]
            rate = learning_rate_at(config.learning_rate, step, config.steps, config.lr_schedule)
            queued = (
                step,
                rate,
                training.forward_backward_custom(data, dpo_loss_fn(batch, config.beta)),
                training.optim_step(AdamParams(learning_rate=rate)),
            )
        if pending is not None:
            done_step, done_rate, forward_backward, optim = pending
            output = forward_backward.result()
            optim.result()
            metrics = {k: v for k, v in output.metrics.items() if ":" not in k} | {"learning_rate": done_rate}
            logger.log(done_step, metrics)
        pending = queued
    return metrics


def run(config: Config) -> dict[str, Any]:
    """Train, and return the final metrics: `train/accuracy` and `heldout/accuracy` (with their
    `_initial` values before the first step), the last step's DPO metrics and the final sampler path."""
    log_dir = log_dir_of(config, RECIPE)
    with connect(config, RECIPE) as service:
        if config.init_state:
            training = service.create_training_client_from_state(config.init_state, run_metadata(config, RECIPE))
        else:
            training = service.create_lora_training_client(
                config.base_model, rank=config.lora_rank, seed=config.seed, user_metadata=run_metadata(config, RECIPE)
            )
        renderer = get_renderer(config.renderer, training.get_tokenizer())
        train_pairs, held_out_pairs = split_held_out(
            load_comparisons(config.data), config.held_out_fraction, config.seed
        )
        reference = training.save_weights_and_get_sampling_client()  # frozen: later steps do not change it
        train_set = reference_pairs(reference, train_pairs, renderer, config.max_length)
        held_out = reference_pairs(reference, held_out_pairs, renderer, config.max_length)
        final: dict[str, Any] = {}
        for name, pairs in (("train", train_set), ("heldout", held_out)):
            if pairs:
                final[f"{name}/accuracy_initial"] = preference_accuracy(training, pairs, config.beta)["accuracy"]
        with MetricsLogger(log_dir, config.steps, RECIPE, show_progress=config.show_progress, run=training) as logger:
            final.update(train_dpo(training, train_set, config, logger))
            for name, pairs in (("train", train_set), ("heldout", held_out)):
                if pairs:
                    evaluation = {
                        f"{name}/{k}": v for k, v in preference_accuracy(training, pairs, config.beta).items()
                    }
                    logger.log(config.steps, evaluation, advance=False)
                    final.update(evaluation)
        final["checkpoint/sampler_path"] = (
            training.save_weights_for_sampler("final", user_metadata=as_metadata(final)).result().path
        )
        return final


if __name__ == "__main__":
    main(Config, run, RECIPE, __doc__)
