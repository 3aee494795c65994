"""Scoring a sampler on a task: sample every problem, grade every response."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import lorasmith
from lorasmith import SamplingParams

from .renderers import Renderer
from .rollouts import Completion, sample_groups
from .tasks import Task


def grade(task: Task, problem: tuple[int, ...], completion: Completion) -> float:
    """The task's reward of a completion that ended with the stop sequence; 0 for one that ran out
    of tokens (an answer that never ends is not an answer, and RL would learn to ramble)."""
    return task.reward(problem, completion.message["content"]) if completion.terminated else 0.0


@dataclass
class TaskScore:
    mean_reward: float
    terminated: float  # the fraction of responses that ended with the stop sequence
    rows: list[dict[str, Any]] = field(default_factory=list)  # one per response: prompt, response, reward

    def metrics(self, prefix: str) -> dict[str, float]:
        return {f"{prefix}/reward": self.mean_reward, f"{prefix}/terminated": self.terminated}


def score_on_task(
    sampler: lorasmith.SamplingClient,
    renderer: Renderer,
    task: Task,
    problems: Sequence[tuple[int, ...]],
    samples_per_problem: int,
    params: SamplingParams,
) -> TaskScore:
    """Mean reward of `samples_per_problem` responses to each problem (a seeded `params` makes
    it reproducible)."""
    groups = sample_groups(sampler, renderer, [task.prompt(p) for p in problems], samples_per_problem, params)
    rows: list[dict[str, Any]] = [
        {
            "prompt": task.prompt(problem)[-1]["content"],
            "response": completion.message["content"],
            "reward": grade(task, problem, completion),
            "terminated": completion.terminated,
        }
        for problem, group in zip(problems, groups)
        for completion in group
    ]
    count = max(len(rows), 1)
    return TaskScore(
        mean_reward=sum(r["reward"] for r in rows) / count,
        terminated=sum(r["terminated"] for r in rows) / count,
        rows=rows,
    )
