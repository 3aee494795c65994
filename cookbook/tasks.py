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

WORD_CATEGORIES: dict[str, list[str]] = {
    "month": [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ],
    "day": ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"],
    "number": ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"],
    "colour": ["red", "blue", "green", "yellow", "black", "white", "brown", "pink"],
    "animal": ["cat", "dog", "bird", "fox", "horse", "cow", "sheep", "goat"],
}


def word_category_split(
    words: int = 3, train_per_category: int = 24, held_out_per_category: int = 5, seed: int = 0
) -> tuple[list[list[Message]], list[list[Message]]]:
    """(train, held_out) chats naming what `words` words have in common ("May June March" ->
    "month", "fox cat goat" -> "animal"), in a seeded order. Every held-out prompt is a set of words
    no training prompt has (in any order), though each word is seen in training.

    Chosen for a randomly initialised base model: at random init attention averages its context
    about evenly, so a prompt's last hidden state is close to a bag of its words; a category is then
    a direction in that space that unseen sets of its words share, and a LoRA learns it from a few
    dozen examples. A lookup that hangs on one token (what comes after "f") does not generalise so:
    the rest of the context moves the hidden state as much as that token does."""
    rng = random.Random(seed)
    train: list[list[Message]] = []
    held_out: list[list[Message]] = []
    for category, members in WORD_CATEGORIES.items():
        sets = list(itertools.combinations(members, words))
        rng.shuffle(sets)
        if len(sets) < train_per_category + held_out_per_category:
            raise ValueError(f"{category!r} has only {len(sets)} sets of {words} words")
        for index, chosen in enumerate(sets[: held_out_per_category + train_per_category]):
            shuffled = list(chosen)
            rng.shuffle(shuffled)
            (held_out if index < held_out_per_category else train).append(_chat(" ".join(shuffled), category))
    rng.shuffle(train)
    rng.shuffle(held_out)
    return train, held_out


def _chat(prompt: str, answer: str) -> list[Message]:
    return [Message(role="user", content=prompt), Message(role="assistant", content=answer)]
