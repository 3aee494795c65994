"""The math on one module: a frozen Linear plus the LoRA deltas of whichever adapters own its rows.

A forward pass carries rows of several adapters. The engine sorts rows by adapter and publishes
the segments in a `Routing`; each wrapped Linear then adds, per contiguous segment of rows,
`scale * (x @ A.T) @ B.T` with that adapter's A (r, d_in) and B (d_out, r). Rows of one adapter
only ever touch that adapter's tensors, so gradients land exactly where they belong.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol, cast

import torch
from torch import nn

# one module's LoRA tensors for the segments in flight: A (S, r, d_in), B (S, d_out, r), and the
# scale, one float when every adapter has the same, else (S, 1, 1)
Stacked = tuple[torch.Tensor, torch.Tensor, float | torch.Tensor]


class LoraWeights(Protocol):
    scale: float

    def pair(self, module_name: str) -> tuple[torch.Tensor, torch.Tensor] | None: ...


class CausalLM(Protocol):
    """What model surgery needs of a model: a Hugging Face causal LM, or any nn.Module like one."""

    def named_modules(self) -> Iterator[tuple[str, nn.Module]]: ...

    def get_submodule(self, target: str) -> nn.Module: ...

    def get_output_embeddings(self) -> nn.Module | None: ...


@dataclass
class Segment:
    adapter: LoraWeights | None  # None: rows run on the bare base model
    start: int
    stop: int


class Routing:
    """Row segments of the batch now in flight; shared by every wrapped module of one model.

    Also keeps each module's stacked LoRA tensors for these segments while no gradient is taken,
    so the decode steps of one sampling batch stack them once, not once per token."""

    def __init__(self) -> None:
        self._segments: list[Segment] = []
        self.stacks: dict[str, Stacked | None] = {}

    @property
    def segments(self) -> list[Segment]:
        return self._segments

    @segments.setter
    def segments(self, segments: list[Segment]) -> None:
        self._segments = segments
        self.stacks = {}


class MultiLoraLinear(nn.Module):
    def __init__(self, base: nn.Linear, module_name: str, kind: str, routing: Routing):
        super().__init__()
        self.base = base
        self.module_name = module_name
        self.kind = kind  # "attn", "mlp" or "unembed": which LoraSpec flag trains it
        self.routing = routing

    @property
    def weight(self) -> torch.Tensor:  # some model code reads `.weight` of projections
        return self.base.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, d_in) -> (B, T, d_out)
        out = self.base(x)  # (B, T, d_out)
        segments = self.routing.segments
        if not segments:
            return out
        if len(segments) == 1:
            delta = self._single_delta(x, segments[0])
        else:
            delta = self._grouped_delta(x, segments)
        return out if delta is None else out + delta.to(out.dtype)

    def _single_delta(self, x: torch.Tensor, seg: Segment) -> torch.Tensor | None:
        owned = _scaled_pair(seg.adapter, self.module_name)
        if owned is None:
            return None
        scale, lora_a, lora_b = owned
        hidden = x.to(lora_a.dtype) @ lora_a.t()  # (B, T, r)
        return (hidden @ lora_b.t()) * scale  # (B, T, d_out)

    def _grouped_delta(self, x: torch.Tensor, segments: list[Segment]) -> torch.Tensor | None:
        """All adapters in two batched matmuls: ranks zero-padded to the largest (zeros add
        nothing), each row picking its adapter's slice; the scale is applied once to the result
        (per segment only where adapters' scales differ), as the single-adapter path does."""
        if torch.is_grad_enabled():
            stacked = self._stack(segments)  # part of this pass's autograd graph: never reused
        else:
            if self.module_name not in self.routing.stacks:
                self.routing.stacks[self.module_name] = self._stack(segments)
            stacked = self.routing.stacks[self.module_name]
        if stacked is None:
            return None
        lora_a, lora_b, scale = stacked  # (S, r, d_in), (S, d_out, r), float or (S, 1, 1)
        d_out, d_in = self.base.out_features, self.base.in_features
        sizes = [seg.stop - seg.start for seg in segments]
        xs = x.to(lora_a.dtype)
        if len(set(sizes)) == 1:  # equal segments: a free view, no per-row copies
            grouped = xs.reshape(len(segments), -1, d_in)  # (S, b*T, d_in), b = B / S rows each
            hidden = torch.bmm(grouped, lora_a.transpose(1, 2))  # (S, b*T, r)
            delta = torch.bmm(hidden, lora_b.transpose(1, 2)) * scale  # (S, b*T, d_out)
            return delta.reshape(x.shape[0], x.shape[1], d_out)  # (B, T, d_out)
        owner = torch.repeat_interleave(
            torch.arange(len(segments), device=lora_a.device), torch.tensor(sizes, device=lora_a.device)
        )  # (B,): the segment of each row
        hidden = torch.bmm(xs, lora_a[owner].transpose(1, 2))  # (B, T, d_in) @ (B, d_in, r) -> (B, T, r)
        delta = torch.bmm(hidden, lora_b[owner].transpose(1, 2))  # (B, T, r) @ (B, r, d_out) -> (B, T, d_out)
        return delta * (scale if isinstance(scale, float) else scale[owner])  # scale[owner]: (B, 1, 1)

    def _stack(self, segments: list[Segment]) -> Stacked | None:
        owned = [_scaled_pair(seg.adapter, self.module_name) for seg in segments]
        present = [o for o in owned if o is not None]
        if not present:
            return None
        rank = max(lora_a.shape[0] for _, lora_a, _ in present)
        d_out, d_in = self.base.out_features, self.base.in_features
        dtype, device = present[0][1].dtype, present[0][1].device
        stacked_a, stacked_b = [], []
        for entry in owned:
            if entry is None:
                stacked_a.append(torch.zeros(rank, d_in, dtype=dtype, device=device))
                stacked_b.append(torch.zeros(d_out, rank, dtype=dtype, device=device))
                continue
            _, lora_a, lora_b = entry
            pad = rank - lora_a.shape[0]
            stacked_a.append(nn.functional.pad(lora_a, (0, 0, 0, pad)) if pad else lora_a)  # (rank, d_in)
            stacked_b.append(nn.functional.pad(lora_b, (0, pad)) if pad else lora_b)  # (d_out, rank)
        scales = [scale for scale, _, _ in present]
        if len(set(scales)) == 1:
            scale: float | torch.Tensor = float(scales[0])
        else:  # rows without an adapter have zero A and B: any scale will do
            per_segment = [entry[0] if entry is not None else 0.0 for entry in owned]
            scale = torch.tensor(per_segment, dtype=dtype, device=device).view(-1, 1, 1)  # (S, 1, 1)
        return torch.stack(stacked_a), torch.stack(stacked_b), scale  # (S, rank, d_in), (S, d_out, rank)


def _scaled_pair(adapter: LoraWeights | None, module_name: str) -> tuple[float, torch.Tensor, torch.Tensor] | None:
    """This adapter's scale, A (r, d_in) and B (d_out, r) for the module, or None if it has none."""
    pair = adapter.pair(module_name) if adapter is not None else None
    if adapter is None or pair is None:
        return None
    return adapter.scale, pair[0], pair[1]


# substrings of an enclosing module's name that mark an attention block or an MLP block
ATTENTION_SCOPES = ("attn", "attention")
MLP_SCOPES = ("mlp", "feed_forward", "ffn", "moe", "experts")
KINDS = ("attn", "mlp", "unembed")


def layer_kinds(model: CausalLM) -> dict[str, str]:
    """Which Linear modules take LoRA, and as what: those inside an attention block ("attn"), inside
    an MLP block ("mlp"), and the output embedding ("unembed"). Found by the enclosing blocks' names,
    so any decoder's naming fits (q_proj or qkv_proj or query_key_value; gate_up_proj, fc1,
    dense_h_to_4h...), like PEFT's "all-linear"."""
    output = model.get_output_embeddings()
    kinds: dict[str, str] = {}
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        scopes = [part.lower() for part in name.split(".")[:-1]]
        if module is output:
            kinds[name] = "unembed"
        elif any(word in scope for scope in scopes for word in ATTENTION_SCOPES):
            kinds[name] = "attn"
        elif any(word in scope for scope in scopes for word in MLP_SCOPES):
            kinds[name] = "mlp"
    return kinds


def wrap_model(model: CausalLM, routing: Routing) -> dict[str, MultiLoraLinear]:
    """Replace every LoRA-taking Linear by a MultiLoraLinear; returns them by module name."""
    kinds = layer_kinds(model)
    if not any(kind == "attn" for kind in kinds.values()) or not any(kind == "mlp" for kind in kinds.values()):
        raise ValueError(
            f"found no attention or no MLP Linear layers in {type(model).__name__}; "
            f"LoRA targets found: {sorted(kinds)[:8]}"
        )
    wrapped: dict[str, MultiLoraLinear] = {}
    for name, kind in kinds.items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        base = cast(nn.Linear, model.get_submodule(name))  # layer_kinds names only nn.Linear modules
        layer = MultiLoraLinear(base, name, kind, routing)
        setattr(parent, child, layer)
        wrapped[name] = layer
    return wrapped
