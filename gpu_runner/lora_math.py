"""The LoRA math of one wrapped module, behind one contract and several implementations.

The contract (the reference, and what every implementation is tested against):

    def reference_delta(x, segments, module_name):              # x: (M, d_in), tokens flattened
        delta = x.new_zeros(M, d_out)
        for seg in segments:                                      # contiguous, cover [0, M) exactly
            pair = seg.adapter.pair(module_name) if seg.adapter else None
            if pair is not None:
                A, B = pair                                       # A (r, d_in), B (d_out, r), fp32 masters
                delta[seg.start:seg.stop] = seg.adapter.scale * (x[seg.start:seg.stop] @ A.T) @ B.T
        return delta                                              # (M, d_out)

Segments are ranges of *tokens* of the flattened batch, so a packed row may hold several adapters.
The matmuls run in the activations' dtype (bf16 under bf16, fp32 under fp32): the fp32 masters are
cast, never the activations, so no fp32 copy of any activation is kept for backward.

Implementations:
- `loop_delta`: one pair of matmuls per segment that has weights; segment bounds are host ints, so
  slicing costs no device sync.
- `grouped_delta`: `torch.nn.functional.grouped_mm` over all segments at once (ranks zero-padded to a
  common multiple of 8, the scale folded into A); for CUDA bf16 on SM >= 80, where it is one kernel
  per matmul. It also runs on CPU with aligned shapes, which is how CI tests it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F


class LoraWeights(Protocol):
    scale: float

    def pair(self, module_name: str) -> tuple[torch.Tensor, torch.Tensor] | None: ...


@dataclass
class Segment:
    """Tokens [start, stop) of the flattened batch belong to `adapter` (None: the bare base model)."""

    adapter: LoraWeights | None
    start: int
    stop: int


def check_segments(segments: Sequence[Segment], tokens: int | None = None) -> None:
    """Segments must be contiguous, non-empty, start at 0 and (when `tokens` is given) end at it."""
    position = 0
    for seg in segments:
        if seg.start != position or seg.stop <= seg.start:
            raise ValueError(
                f"routing segments must be contiguous and non-empty: {seg.start}..{seg.stop} at {position}"
            )
        position = seg.stop
    if tokens is not None and position != tokens:
        raise ValueError(f"routing segments cover {position} tokens but the batch has {tokens}")


def reference_delta(x: torch.Tensor, segments: Sequence[Segment], module_name: str, d_out: int) -> torch.Tensor:
    """The contract, literally (module docstring); for tests, never on a hot path."""
    delta = x.new_zeros(x.shape[0], d_out)
    for seg in segments:
        pair = seg.adapter.pair(module_name) if seg.adapter is not None else None
        if pair is not None:
            lora_a, lora_b = pair
            piece = (x[seg.start : seg.stop] @ lora_a.to(x.dtype).t()) @ lora_b.to(x.dtype).t()
            delta[seg.start : seg.stop] = seg.adapter.scale * piece  # type: ignore[union-attr]
    return delta


def loop_delta(x: torch.Tensor, segments: Sequence[Segment], module_name: str, d_out: int) -> torch.Tensor | None:
    """(M, d_in) -> (M, d_out), or None when no segment has weights for this module."""
    pieces: list[torch.Tensor] = []
    any_weights = False
    for seg in segments:
        pair = seg.adapter.pair(module_name) if seg.adapter is not None else None
        if pair is None:
            pieces.append(x.new_zeros(seg.stop - seg.start, d_out))
            continue
        any_weights = True
        lora_a, lora_b = pair
        hidden = x[seg.start : seg.stop] @ lora_a.to(x.dtype).t()  # (m, r)
        pieces.append((hidden @ lora_b.to(x.dtype).t()) * seg.adapter.scale)  # type: ignore[union-attr]  # (m, d_out)
    if not any_weights:
        return None
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces)


# stacked (scale folded into A) LoRA tensors of one module for a fixed set of segments:
# A^T (S, d_in, R), B^T (S, R, d_out) and the int32 group ends (S,)
GroupedStack = tuple[torch.Tensor, torch.Tensor, torch.Tensor]

RANK_ALIGN = 8  # grouped GEMM kernels want 16-byte aligned strides


def group_ends(segments: Sequence[Segment], device: torch.device) -> torch.Tensor:
    """(S,) int32 end of each segment, on the device. One host-to-device copy: make it once per
    routing, not once per layer (a copy from pageable memory waits for the stream)."""
    return torch.tensor([seg.stop for seg in segments], dtype=torch.int32).to(device)


def stack_for_grouped(
    segments: Sequence[Segment],
    module_name: str,
    d_in: int,
    d_out: int,
    dtype: torch.dtype,
    device: torch.device,
    ends: torch.Tensor | None = None,
) -> GroupedStack | None:
    """Each segment's scaled A^T and B^T, ranks zero-padded to a common multiple of RANK_ALIGN (zero
    rows add nothing); base-only segments get zero tensors. Differentiable to the fp32 masters."""
    pairs = [seg.adapter.pair(module_name) if seg.adapter is not None else None for seg in segments]
    present = [p for p in pairs if p is not None]
    if not present:
        return None
    rank = max(a.shape[0] for a, _ in present)
    rank = -(-rank // RANK_ALIGN) * RANK_ALIGN
    a_t, b_t = [], []
    for seg, pair in zip(segments, pairs):
        if pair is None:
            a_t.append(torch.zeros(d_in, rank, dtype=dtype, device=device))
            b_t.append(torch.zeros(rank, d_out, dtype=dtype, device=device))
            continue
        lora_a, lora_b = pair
        pad = rank - lora_a.shape[0]
        scaled_a = (lora_a * seg.adapter.scale).to(dtype)  # type: ignore[union-attr]  # (r, d_in)
        a_t.append(F.pad(scaled_a, (0, 0, 0, pad)).t())  # (d_in, R)
        b_t.append(F.pad(lora_b.to(dtype), (0, pad)).t())  # (R, d_out)
    ends = ends if ends is not None else group_ends(segments, device)
    return torch.stack(a_t).contiguous(), torch.stack(b_t).contiguous(), ends  # (S, d_in, R), (S, R, d_out)


def grouped_delta(x: torch.Tensor, stack: GroupedStack) -> torch.Tensor:
    """(M, d_in) -> (M, d_out): two grouped GEMMs over the segments named by the stack's group ends."""
    a_t, b_t, ends = stack
    hidden = F.grouped_mm(x.contiguous(), a_t, offs=ends)  # (M, R)
    return F.grouped_mm(hidden, b_t, offs=ends)  # (M, d_out)


def grouped_supported(x: torch.Tensor, d_in: int, d_out: int) -> bool:
    """Where grouped_mm is the fast path: CUDA bf16 on SM >= 80 with 16-byte aligned rows."""
    if x.device.type != "cuda" or x.dtype != torch.bfloat16:
        return False
    major, _ = torch.cuda.get_device_capability(x.device)
    return major >= 8 and d_in % 8 == 0 and d_out % 8 == 0
