"""GRPO-style RL on a verifiable task, with the `importance_sampling` loss.

    python -m cookbook.recipes.rl --base-url http://127.0.0.1:8000 --api-key tml-...

A tiny random model almost never answers correctly, and a group whose rewards are all 0 teaches
nothing, so a few supervised steps on the task's demonstrations come first (`--warm-start-steps`).
Then each step:
1. samples `group_size` completions of `prompts_per_step` problems from the current policy (a
   sampler on a snapshot of the weights, `save_weights_and_get_sampling_client`);
2. grades them; a completion's advantage is its reward minus its group's mean;
3. queues `forward_backward(..., "importance_sampling")`, `optim_step` and the next step's
   snapshot before reading the step's metrics, so the next policy is sampled as soon as it exists.
The task is scored before and after RL on every problem with the same seeded sampling.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import lorasmith
from lorasmith import SamplingParams

from ..cli import RunConfig, as_metadata, connect, log_dir_of, main, run_metadata
from ..data import conversation_to_datum
from ..evaluation import grade, score_on_task
from ..metrics import MetricsLogger
from ..policy_gradient import LoopConfig, run_policy_gradient
from ..renderers import Renderer, get_renderer
from ..rollouts import Completion
from ..supervised import train
from ..tasks import Task, get_task

RECIPE = "rl"


@dataclass
class Config(RunConfig):
    task: str = "addition"
    task_size: int = 2  # addition: the largest operand; reversal: the string length
    warm_start_steps: int = 40  # tiny-llama then answers ~40% right: room to climb, groups that differ
    warm_start_learning_rate: float = 3e-3
    steps: int = 30
    prompts_per_step: int = 9
    group_size: int = 8
    max_tokens: int = 8
    temperature: float = 1.0
    learning_rate: float = 1e-3  # 2e-3 undoes part of the warm start on tiny-llama in the first steps
    eval_samples: int = 6  # per problem, before and after RL
    loss_fn: str = "importance_sampling"  # or "ppo"


def warm_start(
    training: lorasmith.TrainingClient,
    renderer: Renderer,
    task: Task,
    steps: int,
    learning_rate: float,
    seed: int,
    logger: MetricsLogger,
) -> None:
    """`steps` supervised steps on the task's demonstrations (each example's weights normalised)."""
    demonstrations = [conversation_to_datum(task.demonstration(p), renderer, reduction="mean") for p in task.problems()]
    train(training, demonstrations, steps, 16, lambda _: learning_rate, seed, logger.log)


def run(config: Config) -> dict[str, Any]:
    """Warm-start, train, and return the final metrics: `eval/reward_initial` and `eval/reward`
    (the task's mean reward before and after RL), the first and last steps' sampled rewards and
    the final sampler weights' path."""
    log_dir = log_dir_of(config, RECIPE)
    task = get_task(config.task, config.task_size)
    with connect(config, RECIPE) as service:
        training = service.create_lora_training_client(
            config.base_model, rank=config.lora_rank, seed=config.seed, user_metadata=run_metadata(config, RECIPE)
        )
        renderer = get_renderer(config.renderer, training.get_tokenizer())
        with MetricsLogger(
            log_dir, config.warm_start_steps, "warm_start", show_progress=config.show_progress, run=training
        ) as logger:
            warm_start(
                training, renderer, task, config.warm_start_steps, config.warm_start_learning_rate, config.seed, logger
            )
        with MetricsLogger(
            log_dir, config.steps, RECIPE, append=True, show_progress=config.show_progress, run=training
        ) as logger:
            final = reinforce(training, renderer, task, config, logger)
        final["checkpoint/sampler_path"] = (
            training.save_weights_for_sampler("final", user_metadata=as_metadata(final)).result().path
        )
        return final


def reinforce(
    training: lorasmith.TrainingClient, renderer: Renderer, task: Task, config: Config, logger: MetricsLogger
) -> dict[str, Any]:
    """The RL steps on `training`; returns the evaluation before and after and the steps' rewards."""
    problems = task.problems()
    evaluation = SamplingParams(
        max_tokens=config.max_tokens,
        temperature=config.temperature,
        stop=renderer.get_stop_sequences(),
        seed=config.seed,
    )
    before = training.save_weights_and_get_sampling_client()
    initial = score_on_task(before, renderer, task, problems, config.eval_samples, evaluation)
    logger.log(0, initial.metrics("eval"), advance=False)

    def score(chosen: list[int], groups: list[list[Completion]]) -> list[list[float]]:
        return [[grade(task, problems[i], c) for c in group] for i, group in zip(chosen, groups)]

    loop = LoopConfig(
        steps=config.steps,
        prompts_per_step=config.prompts_per_step,
        group_size=config.group_size,
        max_tokens=config.max_tokens,
        temperature=config.temperature,
        learning_rate=config.learning_rate,
        seed=config.seed,
        loss_fn=config.loss_fn,
    )
    sampler, step_rewards = run_policy_gradient(
        training, renderer, [task.prompt(p) for p in problems], score, loop, logger
    )
    final = score_on_task(sampler, renderer, task, problems, config.eval_samples, evaluation)
    logger.log(config.steps, final.metrics("eval"), advance=False)
    return {
        "step": config.steps,
        "eval/reward_initial": initial.mean_reward,
        "eval/reward": final.mean_reward,
        "eval/terminated": final.terminated,
        "train/reward_first_step": step_rewards[0] if step_rewards else None,
        "train/reward_last_step": step_rewards[-1] if step_rewards else None,
    }


if __name__ == "__main__":
    main(Config, run, RECIPE, __doc__)
