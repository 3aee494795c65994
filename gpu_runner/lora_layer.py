"""The math on one module: a frozen Linear plus the LoRA deltas of whichever adapters own its rows.

A forward pass carries rows of several adapters. The engine sorts rows by adapter and publishes
the segments in a `Routing`; each wrapped Linear then adds, per contiguous segment of rows,
`scale * (x @ A.T) @ B.T` with that adapter's A (r, d_in) and B (d_out, r). Rows of one adapter
only ever touch that adapter's tensors, so gradients land exactly where they belong.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Protocol

import torch
from torch import nn


class LoraWeights(Protocol):
    scale: float

    def pair(self, module_name: str) -> Optional[tuple[torch.Tensor, torch.Tensor]]: ...


@dataclass
class Segment:
    adapter: Optional[LoraWeights]  # None: rows run on the bare base model
    start: int
    stop: int


@dataclass
class Routing:
    """Row segments of the batch now in flight; shared by every wrapped module of one model."""

    segments: list[Segment] = field(default_factory=list)


class MultiLoraLinear(nn.Module):
    def __init__(self, base: nn.Linear, module_name: str, routing: Routing):
        super().__init__()
        self.base = base
        self.module_name = module_name
        self.routing = routing

    @property
    def weight(self) -> torch.Tensor:  # some model code reads `.weight` of projections
        return self.base.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)  # (B, T, d_out)
        segments = self.routing.segments
        if not segments:
            return out
        # split (not slicing): its backward is one cat, where each slice would zero a full-size grad
        chunks = x.split([seg.stop - seg.start for seg in segments], dim=0)
        pieces: list[torch.Tensor] = []
        any_delta = False
        for seg, xs in zip(segments, chunks):
            pair = seg.adapter.pair(self.module_name) if seg.adapter is not None else None
            if pair is None:
                pieces.append(out.new_zeros((seg.stop - seg.start,) + out.shape[1:]))
                continue
            lora_a, lora_b = pair
            delta = (xs.to(lora_a.dtype) @ lora_a.t()) @ lora_b.t()  # (b, T, r) -> (b, T, d_out)
            pieces.append((delta * seg.adapter.scale).to(out.dtype))
            any_delta = True
        if not any_delta:
            return out
        return out + (pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=0))


ATTENTION_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_MODULES = ("gate_proj", "up_proj", "down_proj")
UNEMBED_MODULES = ("lm_head",)


def wrap_model(model: nn.Module, routing: Routing) -> dict[str, MultiLoraLinear]:
    """Replace every trainable-kind Linear by a MultiLoraLinear; returns them by module name."""
    wanted = set(ATTENTION_MODULES + MLP_MODULES + UNEMBED_MODULES)
    targets = [
        (name, module) for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in wanted
    ]
    wrapped: dict[str, MultiLoraLinear] = {}
    for name, module in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        layer = MultiLoraLinear(module, name, routing)
        setattr(parent, child, layer)
        wrapped[name] = layer
    return wrapped


def module_kind(module_name: str) -> str:
    short = module_name.rsplit(".", 1)[-1]
    if short in ATTENTION_MODULES:
        return "attn"
    if short in MLP_MODULES:
        return "mlp"
    return "unembed"
