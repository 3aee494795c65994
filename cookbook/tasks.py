"""Verifiable tasks: prompts whose answers a program can grade, for RL and evaluation.

A task lists its problems, renders a problem as chat messages, shows a correct answer (for
warm-start SFT) and grades a response with a reward in [0, 1].
"""

from __future__ import annotations

import itertools
import re
import string
from dataclasses import dataclass
from typing import Protocol

from .renderers import Message

INTEGER = re.compile(r"-?\d+")


class Task(Protocol):
    @property
    def name(self) -> str: ...

    def problems(self) -> list[tuple[int, ...]]: ...

    def prompt(self, problem: tuple[int, ...]) -> list[Message]: ...

    def demonstration(self, problem: tuple[int, ...]) -> list[Message]: ...

    def reward(self, problem: tuple[int, ...], response: str) -> float: ...


@dataclass(frozen=True)
class AdditionTask:
    """ "What is a plus b?" for 0 <= a, b <= max_operand; reward 1 when the response's last integer
    is a + b. The demonstration answers with the bare number."""

    max_operand: int = 4
    name: str = "addition"

    def problems(self) -> list[tuple[int, ...]]:
        return [(a, b) for a in range(self.max_operand + 1) for b in range(self.max_operand + 1)]

    def prompt(self, problem: tuple[int, ...]) -> list[Message]:
        a, b = problem
        return [Message(role="user", content=f"What is {a} plus {b}?")]

    def demonstration(self, problem: tuple[int, ...]) -> list[Message]:
        return [*self.prompt(problem), Message(role="assistant", content=str(sum(problem)))]

    def reward(self, problem: tuple[int, ...], response: str) -> float:
        numbers = INTEGER.findall(response)
        return 1.0 if numbers and int(numbers[-1]) == sum(problem) else 0.0


@dataclass(frozen=True)
class ReversalTask:
    """ "Reverse: a b c" -> "c b a" over the first `alphabet_size` letters, `length` distinct letters
    each; reward: the fraction of positions right (0 when the length is wrong). Copying from the
    prompt is easy for attention, so even a tiny model has a reward to climb from."""

    length: int = 2
    alphabet_size: int = 5
    name: str = "reversal"

    def problems(self) -> list[tuple[int, ...]]:
        return list(itertools.permutations(range(self.alphabet_size), self.length))

    def _letters(self, problem: tuple[int, ...]) -> list[str]:
        return [string.ascii_lowercase[i] for i in problem]

    def prompt(self, problem: tuple[int, ...]) -> list[Message]:
        return [Message(role="user", content="Reverse: " + " ".join(self._letters(problem)))]

    def demonstration(self, problem: tuple[int, ...]) -> list[Message]:
        return [*self.prompt(problem), Message(role="assistant", content=" ".join(reversed(self._letters(problem))))]

    def reward(self, problem: tuple[int, ...], response: str) -> float:
        expected = list(reversed(self._letters(problem)))
        got = response.split()
        if len(got) != len(expected):
            return 0.0
        return sum(g == e for g, e in zip(got, expected)) / len(expected)


def get_task(name: str, size: int) -> Task:
    """The task called `name`: "addition" with operands up to `size`, or "reversal" of `size` letters."""
    if name == "addition":
        return AdditionTask(max_operand=size)
    if name == "reversal":
        return ReversalTask(length=size)
    raise ValueError(f"unknown task {name!r}; choose 'addition' or 'reversal'")
