"""What a finished operation consumed, from its payload and result alone (no database), so the
model layer can count it as the operation ends without importing the usage reports:

- `forward_backward`: the tokens of every datum's `model_input` are `tokens_trained`, or
  `tokens_forward` for a forward-only pass;
- `sample`: the tokens generated, over all returned sequences, are `tokens_sampled`;
- `optim_step`: one optimizer step.

Other operations (creating a model, saves, loads) consume no tokens and leave no record.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

COUNTS = ("tokens_trained", "tokens_forward", "tokens_sampled", "optimizer_steps")


@dataclass(frozen=True)
class Counts:
    tokens_trained: int = 0
    tokens_forward: int = 0
    tokens_sampled: int = 0
    optimizer_steps: int = 0

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def consumed(kind: str, payload: dict[str, Any], result: dict) -> Counts:
    """What an operation of `kind` with `payload` consumed, given the result it finished with."""
    if kind == "forward_backward":
        tokens = sum(_input_length(datum["model_input"]) for datum in payload["data"])
        return Counts(tokens_forward=tokens) if payload.get("forward_only") else Counts(tokens_trained=tokens)
    if kind == "optim_step":
        return Counts(optimizer_steps=1)
    if kind == "sample":
        return Counts(tokens_sampled=sum(len(sequence["tokens"]) for sequence in result["sequences"]))
    return Counts()


def _input_length(model_input: dict) -> int:
    return sum(len(chunk["tokens"]) for chunk in model_input["chunks"])
