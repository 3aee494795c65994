"""Packed batches: the sequences of a pass laid into rows without per-sequence padding.

Sequences (already grouped by adapter) fill rows in order, each row holding up to the longest
sequence's length (or `row_tokens`, if more): SDPA pays for a packed row's whole length under its
block-diagonal mask, so rows no longer than the longest sequence bound attention's cost by what
padding every sequence to the longest would cost, without the padding's MLP and head work.
Each sequence's `position_ids` restart at 0, and the model is called with no `attention_mask` and
`use_cache=False`: transformers then builds a block-diagonal causal mask from the position resets,
so no sequence sees another. (With the cache on it does not,
and packed sequences silently attend to each other; `tests/engine/test_packing.py` guards that.)

Rows are right-padded to the longest row. The padding's positions continue its row's last sequence
when they can, so a row holding one sequence stays a plain causal row; padding sits after every real
token of its row, so causality keeps it from reaching them, and its outputs are never read.

Tokens are routed by segments of the flattened (rows x width) batch: filling rows in order keeps
each adapter's tokens contiguous once a row's padding counts as its last sequence's adapter.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .lora_math import LoraWeights, Segment


@dataclass
class PackedBatch:
    input_ids: torch.Tensor  # (R, W)
    position_ids: torch.Tensor  # (R, W)
    starts: list[int]  # flat index (row * W + column) of each sequence's first token
    lengths: list[int]
    segments: list[Segment]  # over the R * W flattened tokens

    @property
    def tokens(self) -> int:
        return self.input_ids.numel()

    def flat_index(self) -> torch.Tensor:
        """(sum of lengths,) flat indices of every real token, sequence by sequence."""
        return torch.cat([torch.arange(s, s + n) for s, n in zip(self.starts, self.lengths)])


def micro_batches(lengths: Sequence[int], budget_tokens: int) -> list[range]:
    """Consecutive runs of sequences whose tokens add up to at most `budget_tokens` (a longer
    sequence runs alone). Losses are sums over datums, so accumulating gradients over these runs
    gives exactly the gradient of the whole pass."""
    runs: list[range] = []
    start, used = 0, 0
    for i, n in enumerate(lengths):
        if i > start and used + n > budget_tokens:
            runs.append(range(start, i))
            start, used = i, 0
        used += n
    if lengths:
        runs.append(range(start, len(lengths)))
    return runs


def pack(
    sequences: Sequence[Sequence[int]],
    owners: Sequence[LoraWeights | None],
    row_tokens: int,
    pad_id: int,
    max_position: int,
) -> PackedBatch:
    """`owners[i]` is sequence i's adapter; sequences of one adapter must be consecutive."""
    capacity = max(row_tokens, max(len(s) for s in sequences))
    rows: list[list[int]] = []  # sequence indices per row
    fill: list[int] = []
    for i, seq in enumerate(sequences):
        if not rows or fill[-1] + len(seq) > capacity:
            rows.append([])
            fill.append(0)
        rows[-1].append(i)
        fill[-1] += len(seq)
    width = max(fill)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # (R, W)
    position_ids = torch.zeros((len(rows), width), dtype=torch.long)  # (R, W)
    starts = [0] * len(sequences)
    for r, members in enumerate(rows):
        column = 0
        for i in members:
            n = len(sequences[i])
            input_ids[r, column : column + n] = torch.tensor(sequences[i], dtype=torch.long)
            position_ids[r, column : column + n] = torch.arange(n)
            starts[i] = r * width + column
            column += n
        if column < width:  # padding: continue the last sequence's positions if that stays in range
            last = len(sequences[members[-1]])
            first = last if last + width - column <= max_position else 0
            position_ids[r, column:] = torch.arange(first, first + width - column)
    segments: list[Segment] = []
    for i, owner in enumerate(owners):
        if segments and segments[-1].adapter is owner:
            continue
        if segments:
            segments[-1].stop = starts[i]
        segments.append(Segment(owner, 0 if not segments else starts[i], starts[i]))
    segments[-1].stop = len(rows) * width
    return PackedBatch(input_ids, position_ids, starts, [len(s) for s in sequences], segments)
