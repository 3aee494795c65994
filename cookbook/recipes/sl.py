"""Supervised fine-tuning on a chat JSONL, with a learning-rate schedule, held-out NLL,
checkpoints and resume.

    python -m cookbook.recipes.sl --base-url http://127.0.0.1:8000 --api-key tml-...

Each step trains on one batch (`batch_at_step`: seeded, a pure function of the step), its weights
normalised per example so each chat counts the same. Step n+1 is queued before step n's results
are read. Every `eval_every` steps the held-out NLL per token is measured with a forward pass;
every `save_every` steps (and at the end) state and sampler weights are saved and recorded in
`checkpoints.jsonl`. `--resume` continues from the last recorded checkpoint in `--log-dir`,
optimizer state included, and sees exactly the batches the interrupted run would have.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import lorasmith

from ..checkpoints import PendingCheckpoint, last_checkpoint, submit_checkpoint
from ..cli import DATA_DIR, RunConfig, connect, log_dir_of, main, run_metadata
from ..data import batch_at_step, conversation_to_datum, load_conversations, split_held_out
from ..metrics import MetricsLogger
from ..renderers import TrainOnWhat, get_renderer
from ..schedules import learning_rate_at
from ..supervised import StepFutures, mean_nll, submit_step

RECIPE = "sl"


@dataclass
class Config(RunConfig):
    data: str = str(DATA_DIR / "arithmetic_chats.jsonl")
    held_out_fraction: float = 0.2
    held_out_data: str = ""  # a chat JSONL held out instead (then all of `data` trains)
    train_on_what: str = TrainOnWhat.ALL_ASSISTANT_MESSAGES.value
    max_length: int = 256
    batch_size: int = 16
    steps: int = 40
    learning_rate: float = 3e-3
    lr_schedule: str = "linear"
    warmup_steps: int = 0
    eval_every: int = 10
    save_every: int = 20  # 0: only at the end
    resume: bool = False


def run(config: Config) -> dict[str, Any]:
    """Train, and return the final metrics: `heldout/nll` (and `heldout/nll_initial`, measured at
    this run's first step), `train/nll`, `step` and the last checkpoint's paths."""
    log_dir = log_dir_of(config, RECIPE)
    resume_from = last_checkpoint(log_dir) if config.resume else None
    with connect(config, RECIPE) as service:
        if resume_from is not None:
            training = service.create_training_client_from_state_with_optimizer(
                resume_from.state_path, run_metadata(config, RECIPE)
            )
        else:
            training = service.create_lora_training_client(
                config.base_model, rank=config.lora_rank, seed=config.seed, user_metadata=run_metadata(config, RECIPE)
            )
        renderer = get_renderer(config.renderer, training.get_tokenizer())
        chats = load_conversations(config.data)
        if config.held_out_data:
            train_chats, held_out_chats = chats, load_conversations(config.held_out_data)
        else:
            train_chats, held_out_chats = split_held_out(chats, config.held_out_fraction, config.seed)
        train_on = TrainOnWhat(config.train_on_what)
        train_data = [conversation_to_datum(c, renderer, train_on, config.max_length, "mean") for c in train_chats]
        held_out = [conversation_to_datum(c, renderer, train_on, config.max_length) for c in held_out_chats]
        start = resume_from.step if resume_from is not None else 0
        with MetricsLogger(
            log_dir,
            config.steps,
            RECIPE,
            start,
            append=resume_from is not None,
            show_progress=config.show_progress,
            run=training,
        ) as logger:
            return _train(training, config, train_data, held_out, start, logger)


def _train(
    training: lorasmith.TrainingClient,
    config: Config,
    train_data: list[lorasmith.Datum],
    held_out: list[lorasmith.Datum],
    start: int,
    logger: MetricsLogger,
) -> dict[str, Any]:
    batch_size = min(config.batch_size, len(train_data))
    initial_nll: float | None = None
    pending: StepFutures | None = None
    checkpoint = None
    for step in range(start, config.steps + 1):
        # requests of weights after `step` steps: evaluation, checkpoint, then the next step
        evaluation = None
        if held_out and (step % config.eval_every == 0 or step == config.steps):
            evaluation = training.forward(held_out)
        saving: PendingCheckpoint | None = None
        if step > start and ((config.save_every and step % config.save_every == 0) or step == config.steps):
            saving = submit_checkpoint(training, step, {"recipe": RECIPE, **logger.latest})
        queued = None
        if step < config.steps:
            batch = batch_at_step(train_data, batch_size, step, config.seed)
            rate = learning_rate_at(config.learning_rate, step, config.steps, config.lr_schedule, config.warmup_steps)
            queued = submit_step(training, step, batch, rate)
        # then wait: the server works on the queued step meanwhile
        if pending is not None:
            logger.log(pending.step, pending.metrics())
        if evaluation is not None:
            nll = mean_nll(evaluation.result(), held_out)
            initial_nll = nll if initial_nll is None else initial_nll
            logger.log(step, {"heldout/nll": nll}, advance=False)
        if saving is not None:
            checkpoint = saving.record(logger.path.parent)
        pending = queued
    final: dict[str, Any] = {"step": config.steps, **logger.latest}
    if initial_nll is not None:
        final["heldout/nll_initial"] = initial_nll
    if checkpoint is not None:
        final.update(
            {"checkpoint/state_path": checkpoint.state_path, "checkpoint/sampler_path": checkpoint.sampler_path}
        )
    return final


if __name__ == "__main__":
    main(Config, run, RECIPE, __doc__)
