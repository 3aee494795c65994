"""Data helpers: load chats, plain text and comparison pairs; shuffle, split and batch them; build Datums.

Loaders come in two kinds: `iter_*` read a file line by line (files larger than memory stream
through them), `load_*` return a list. Everything that shuffles takes a seed and gives the same
order for the same seed, so a run that resumes at step n sees the batches it would have seen.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from lorasmith import Datum, ModelInput, TensorData

from .renderers import Message, Renderer, TrainOnWhat

T = TypeVar("T")
Reduction = Literal["sum", "mean"]


@dataclass(frozen=True)
class Comparison:
    """A preference pair: two completions of one prompt, the first preferred."""

    prompt: list[Message]
    chosen: list[Message]
    rejected: list[Message]


class DataError(ValueError):
    """A data file or an example that cannot be used; the message names the file and line."""


# ---- loading --------------------------------------------------------------------------------


def iter_jsonl(path: str | Path) -> Iterator[dict[str, Any]]:
    """The JSON objects of a JSONL file, one line at a time (blank lines skipped)."""
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f"{path}:{number}: not JSON ({error.msg})") from None
            if not isinstance(record, dict):
                raise DataError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
            yield record


def iter_text_lines(path: str | Path) -> Iterator[str]:
    """The non-blank lines of a text file without their line ends, one at a time."""
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            if line.strip():
                yield line.rstrip("\r\n")


def _messages(value: Any, where: str) -> list[Message]:
    if not isinstance(value, list) or not value:
        raise DataError(f"{where}: expected a non-empty list of messages")
    for message in value:
        if not (isinstance(message, dict) and isinstance(message.get("role"), str)):
            raise DataError(f"{where}: every message needs a string 'role'")
        if not isinstance(message.get("content"), str):
            raise DataError(f"{where}: every message needs a string 'content'")
    return [Message(role=m["role"], content=m["content"]) for m in value]


def iter_conversations(path: str | Path) -> Iterator[list[Message]]:
    """Chats from JSONL lines `{"messages": [{"role": ..., "content": ...}, ...]}`, streamed."""
    for number, record in enumerate(iter_jsonl(path), 1):
        yield _messages(record.get("messages"), f"{path}: record {number} 'messages'")


def load_conversations(path: str | Path) -> list[list[Message]]:
    """All chats of a chat JSONL file (see `iter_conversations`)."""
    return list(iter_conversations(path))


def iter_comparisons(path: str | Path) -> Iterator[Comparison]:
    """Pairs from JSONL lines `{"prompt": [messages], "chosen": [messages], "rejected": [messages]}`."""
    for number, record in enumerate(iter_jsonl(path), 1):
        where = f"{path}: record {number}"
        yield Comparison(
            prompt=_messages(record.get("prompt"), f"{where} 'prompt'"),
            chosen=_messages(record.get("chosen"), f"{where} 'chosen'"),
            rejected=_messages(record.get("rejected"), f"{where} 'rejected'"),
        )


def load_comparisons(path: str | Path) -> list[Comparison]:
    """All pairs of a comparison JSONL file (see `iter_comparisons`)."""
    return list(iter_comparisons(path))


# ---- order and splits -----------------------------------------------------------------------


def shuffled(items: Sequence[T], seed: int) -> list[T]:
    """A copy of `items` in a random order that depends only on `seed`."""
    order = list(items)
    random.Random(seed).shuffle(order)
    return order


def shuffle_buffered(items: Iterable[T], buffer_size: int, seed: int) -> Iterator[T]:
    """A stream shuffled within a window of `buffer_size` items: memory stays at the window's size,
    and the order depends only on the stream and `seed`."""
    if buffer_size < 1:
        raise ValueError(f"buffer_size must be at least 1, got {buffer_size}")
    rng = random.Random(seed)
    buffer: list[T] = []
    for item in items:
        buffer.append(item)
        if len(buffer) == buffer_size:
            index = rng.randrange(buffer_size)
            buffer[index], buffer[-1] = buffer[-1], buffer[index]
            yield buffer.pop()
    rng.shuffle(buffer)
    yield from buffer


def split_held_out(items: Sequence[T], fraction: float, seed: int) -> tuple[list[T], list[T]]:
    """(train, held_out): a seeded shuffle, its first round(fraction * n) items held out."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"the held-out fraction must be in [0, 1), got {fraction}")
    order = shuffled(items, seed)
    count = round(fraction * len(order))
    return order[count:], order[:count]


# ---- batching -------------------------------------------------------------------------------


def batches(items: Iterable[T], batch_size: int, drop_last: bool = False) -> Iterator[list[T]]:
    """Consecutive batches of `batch_size` items from a list or a stream."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch and not drop_last:
        yield batch


def token_budget_batches(datums: Iterable[Datum], max_tokens: int) -> Iterator[list[Datum]]:
    """Consecutive batches whose input tokens add up to at most `max_tokens`; a datum longer than
    the budget makes a batch of its own."""
    batch: list[Datum] = []
    size = 0
    for datum in datums:
        length = datum.model_input.length
        if batch and size + length > max_tokens:
            yield batch
            batch, size = [], 0
        batch.append(datum)
        size += length
    if batch:
        yield batch


def batch_at_step(items: Sequence[T], batch_size: int, step: int, seed: int) -> list[T]:
    """The batch of training step `step`: epoch e is a shuffle seeded by (seed, e) cut into
    len(items) // batch_size batches. A pure function of the step, so a resumed run continues
    exactly where it stopped."""
    per_epoch = len(items) // batch_size
    if per_epoch == 0:
        raise DataError(f"{len(items)} examples cannot fill one batch of {batch_size}")
    epoch, index = divmod(step, per_epoch)
    order = shuffled(items, seed * 1_000_003 + epoch)
    return order[index * batch_size : (index + 1) * batch_size]


# ---- Datums ---------------------------------------------------------------------------------


def datum_from_tokens(
    tokens: Sequence[int], weights: Sequence[float], max_length: int | None = None, reduction: Reduction = "sum"
) -> Datum:
    """A next-token Datum: inputs tokens[:-1], targets tokens[1:], weights[1:].

    `weights[i]` is token i's weight, so a prompt token with weight 0 is never a trained target.
    `max_length` keeps the first max_length tokens. `reduction="mean"` divides the weights by
    their sum, so every example counts the same in a batch whatever its length.
    """
    if len(tokens) != len(weights):
        raise DataError(f"{len(tokens)} tokens but {len(weights)} weights")
    if max_length is not None:
        tokens, weights = tokens[:max_length], weights[:max_length]
    if len(tokens) < 2:
        raise DataError(f"a Datum needs at least 2 tokens, got {len(tokens)}")
    target_weights = [float(w) for w in weights[1:]]
    if reduction == "mean":
        total = sum(target_weights)
        if total <= 0:
            raise DataError("no token has a positive weight, so the mean is undefined")
        target_weights = [w / total for w in target_weights]
    return Datum(
        model_input=ModelInput.from_ints(list(tokens[:-1])),
        loss_fn_inputs={
            "target_tokens": TensorData(data=list(tokens[1:]), dtype="int64"),
            "weights": TensorData(data=list(target_weights), dtype="float32"),
        },
    )


def conversation_to_datum(
    messages: list[Message],
    renderer: Renderer,
    train_on_what: TrainOnWhat = TrainOnWhat.ALL_ASSISTANT_MESSAGES,
    max_length: int | None = None,
    reduction: Reduction = "sum",
) -> Datum:
    """A supervised Datum of a chat: the renderer's tokens, prompt tokens weighted 0."""
    tokens, weights = renderer.build_supervised_example(messages, train_on_what)
    return datum_from_tokens(tokens, weights, max_length, reduction)


def text_to_datum(text: str, tokenizer: Any, max_length: int | None = None) -> Datum:
    """A Datum training on every token of a plain text (after the first, which nothing predicts)."""
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    tokens = bos + list(tokenizer.encode(text, add_special_tokens=False))
    return datum_from_tokens(tokens, [0.0] * len(bos) + [1.0] * (len(tokens) - len(bos)), max_length)


def target_weights(datum: Datum) -> list[float]:
    """A datum's per-target weights (1.0 each when it has none)."""
    if "weights" in datum.loss_fn_inputs:
        return [float(w) for w in datum.loss_fn_inputs["weights"].tolist()]
    return [1.0] * datum.model_input.length
