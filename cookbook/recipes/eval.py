"""Sample and score checkpoints on a verifiable task, side by side.

    python -m cookbook.recipes.eval --base-url ... --api-key ... \\
        --checkpoints tinker://RUN/sampler_weights/final,base

Each entry of `--checkpoints` is sampler weights (`tinker://.../sampler_weights/...`) or `base`
(the base model without an adapter). Every checkpoint answers the same problems with the same
seeded sampling, so a difference in mean reward is the checkpoints' and not the dice's. Prints a
table (mean reward, fraction of answers that ended with the stop sequence) and one example answer
per checkpoint; writes every graded answer to `answers.jsonl` in the log directory.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import lorasmith
from lorasmith import SamplingParams

from ..cli import RunConfig, connect, log_dir_of, main
from ..evaluation import TaskScore, score_on_task
from ..renderers import get_renderer
from ..tasks import get_task

RECIPE = "eval"
BASE = "base"


@dataclass
class Config(RunConfig):
    checkpoints: str = BASE  # comma-separated sampler paths, or "base"
    task: str = "addition"
    task_size: int = 2
    samples_per_problem: int = 8
    max_tokens: int = 8
    temperature: float = 1.0


def sampler_for(service: lorasmith.ServiceClient, checkpoint: str, base_model: str) -> lorasmith.SamplingClient:
    if checkpoint == BASE:
        return service.create_sampling_client(base_model=base_model)
    return service.create_sampling_client(model_path=checkpoint)


def table(scores: dict[str, TaskScore]) -> str:
    """The side-by-side comparison, one row per checkpoint."""
    width = max(len(name) for name in scores)
    lines = [f"{'checkpoint':<{width}}  mean reward  terminated  example answer"]
    for name, score in scores.items():
        example = score.rows[0] if score.rows else {"prompt": "", "response": ""}
        answer = f"{example['prompt']!r} -> {example['response']!r}"
        lines.append(f"{name:<{width}}  {score.mean_reward:11.3f}  {score.terminated:10.3f}  {answer}")
    return "\n".join(lines)


def run(config: Config) -> dict[str, Any]:
    """Score every checkpoint; returns `{checkpoint: {"reward", "terminated"}}`."""
    log_dir = log_dir_of(config, RECIPE)
    task = get_task(config.task, config.task_size)
    checkpoints = [c.strip() for c in config.checkpoints.split(",") if c.strip()]
    with connect(config, RECIPE) as service:
        samplers = {c: sampler_for(service, c, config.base_model) for c in checkpoints}
        renderer = get_renderer(config.renderer, next(iter(samplers.values())).get_tokenizer())
        params = SamplingParams(
            max_tokens=config.max_tokens,
            temperature=config.temperature,
            stop=renderer.get_stop_sequences(),
            seed=config.seed,
        )
        scores = {
            name: score_on_task(sampler, renderer, task, task.problems(), config.samples_per_problem, params)
            for name, sampler in samplers.items()
        }
    with open(log_dir / "answers.jsonl", "w", encoding="utf-8") as answers:
        for name, score in scores.items():
            for row in score.rows:
                answers.write(json.dumps({"checkpoint": name, **row}) + "\n")
    if config.show_progress:
        print(table(scores))
    return {name: {"reward": s.mean_reward, "terminated": s.terminated} for name, s in scores.items()}


if __name__ == "__main__":
    main(Config, run, RECIPE, __doc__)
