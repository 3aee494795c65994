"""Verifiable tasks: prompts whose answers a program can grade, for RL and evaluation.

A task lists its problems, renders a problem as chat messages, shows a correct answer (for
warm-start SFT) and grades a response with a reward in [0, 1].
"""

from __future__ import annotations

import itertools
import random
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


# ---- a task a randomly initialised model learns in minutes -------------------------------------

NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]


def next_in_sequence_problems() -> list[tuple[str, str]]:
    """(prompt, answer) pairs: a run of 1-3 lowercase letters answered by the next letter in
    capitals ("f g h" -> "I"), and a run of 1-3 digits by the next number as a word ("3 4" ->
    "five"). The answer always follows from the prompt's last token, and no answer token ever
    ends a prompt, so a model can learn it without reading back through its context."""
    letters, capitals = string.ascii_lowercase, string.ascii_uppercase
    problems = []
    for start in range(26):
        for length in (1, 2, 3):
            if start + length < 26:
                problems.append((" ".join(letters[start : start + length]), capitals[start + length]))
    for start in range(10):
        for length in (1, 2, 3):
            if start + length <= 10:
                digits = " ".join(str(d) for d in range(start, start + length))
                problems.append((digits, NUMBER_WORDS[start + length]))
    return problems


def next_in_sequence_split(fraction: float = 0.2, seed: int = 0) -> tuple[list[list[Message]], list[list[Message]]]:
    """(train, held_out) chats of `next_in_sequence_problems`: about `fraction` held out, seeded,
    never a prompt whose last item no training prompt ends with (its answer could not be learned)."""
    problems = next_in_sequence_problems()
    random.Random(seed).shuffle(problems)
    wanted = round(fraction * len(problems))
    train: list[tuple[str, str]] = []
    held_out: list[tuple[str, str]] = []
    last_items_trained: set[str] = set()
    for prompt, answer in problems:
        last = prompt.split()[-1]
        if len(held_out) < wanted and last in last_items_trained:
            held_out.append((prompt, answer))
        else:
            train.append((prompt, answer))
            last_items_trained.add(last)
    missing = {p.split()[-1] for p, _ in held_out} - {p.split()[-1] for p, _ in train}
    assert not missing, missing
    return [_chat(p, a) for p, a in train], [_chat(p, a) for p, a in held_out]


def _chat(prompt: str, answer: str) -> list[Message]:
    return [Message(role="user", content=prompt), Message(role="assistant", content=answer)]
