"""Model surgery: which modules take LoRA, and the wrapper that adds the deltas of the adapters
owning its tokens (the math itself is `lora_math`, behind its contract).

A forward pass carries tokens of several adapters. The engine lays tokens out grouped by adapter and
publishes their segments in a `Routing` shared by every wrapped module; each `MultiLoraLinear` adds,
per segment, `scale * (x @ A.T) @ B.T` with that adapter's A (r, d_in) and B (d_out, r). Tokens of
one adapter only ever touch that adapter's tensors, so gradients land exactly where they belong.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Literal, Protocol, cast

import torch
from torch import nn

from .errors import EngineInputError
from .expert_lora import MultiLoraExperts, Shapes, expert_parameters, unsupported_reason
from .lora_math import (
    GroupedStack,
    LoraWeights,
    Segment,
    check_segments,
    group_ends,
    grouped_delta,
    grouped_supported,
    loop_delta,
    stack_for_grouped,
)

__all__ = [
    "KINDS",
    "LoraModule",
    "LoraWeights",
    "MultiLoraExperts",
    "MultiLoraLinear",
    "Routing",
    "Segment",
    "layer_kinds",
    "weight_kinds",
    "wrap_model",
]

Backend = Literal["auto", "loop", "grouped"]


class CausalLM(Protocol):
    """What model surgery needs of a model: a Hugging Face causal LM, or any nn.Module like one."""

    def named_modules(self) -> Iterator[tuple[str, nn.Module]]: ...

    def get_submodule(self, target: str) -> nn.Module: ...

    def get_output_embeddings(self) -> nn.Module | None: ...


class Routing:
    """Token segments of the batch now in flight; shared by every wrapped module of one model.

    Setting segments checks they are contiguous; every wrapped module then checks they cover its
    input's tokens exactly. While no gradient is taken, each module's grouped stack is kept for as
    long as the segments stay the same, so the decode steps of one sampling batch stack it once."""

    def __init__(self, backend: Backend = "auto") -> None:
        self._segments: list[Segment] = []
        self._key: tuple = ()
        self.backend: Backend = backend
        self.stacks: dict[str, GroupedStack | None] = {}
        self.expert_stacks: dict[str, tuple] = {}  # expert_grouped's factor stacks, kept likewise
        self._ends: dict[tuple, torch.Tensor] = {}

    @property
    def segments(self) -> list[Segment]:
        return self._segments

    @segments.setter
    def segments(self, segments: list[Segment]) -> None:
        check_segments(segments)
        key = tuple((id(s.adapter), s.start, s.stop) for s in segments)
        if key != self._key:
            self.stacks, self.expert_stacks, self._ends = {}, {}, {}
        self._segments, self._key = list(segments), key

    def group_ends(self, segments: Sequence[Segment], device: torch.device) -> torch.Tensor:
        """The segments' int32 ends on `device`, copied once for as long as the segments stay."""
        key = (str(device), *((s.start, s.stop) for s in segments))
        if key not in self._ends:
            self._ends[key] = group_ends(segments, device)
        return self._ends[key]

    @property
    def tokens(self) -> int:
        return self._segments[-1].stop if self._segments else 0


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

    @property
    def in_features(self) -> int:
        return self.base.in_features

    def lora_shapes(self, rank: int, layout: str) -> Shapes:
        """{module name: (A shape, B shape)}; `layout` concerns experts only."""
        return {self.module_name: ((rank, self.base.in_features), (self.base.out_features, rank))}

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., d_in) -> (..., d_out)
        segments = self.routing.segments
        if not segments:
            return self.base(x)
        tokens, batch_tokens = x.numel() // x.shape[-1], self.routing.tokens
        if tokens != batch_tokens and tokens % batch_tokens == 0 and not torch.is_grad_enabled():
            # fed every cached position, not only the new tokens: DeepSeek-V3's MLA caches compressed
            # latents and applies kv_b_proj to the whole row at each decode step, (b, 1, L, r) for b rows of
            # one new token; a decode step's segments are whole rows, so each widens to its rows' L positions
            # (only without grad: a training pass has no cache, and a mismatch there stays an error)
            return self.forward_with(x, widen(segments, tokens // batch_tokens), cache=False)
        return self.forward_with(x, segments, cache=not torch.is_grad_enabled())

    def forward_with(self, x: torch.Tensor, segments: Sequence[Segment], cache: bool = False) -> torch.Tensor:
        """The base output plus each segment's LoRA delta; `segments` cover x's tokens exactly."""
        out = self.base(x)  # (..., d_out)
        flat = x.reshape(-1, x.shape[-1])  # (M, d_in)
        check_segments(segments, flat.shape[0])
        delta = self._delta(flat, segments, cache)
        return out if delta is None else out + delta.view(out.shape).to(out.dtype)

    def _delta(self, flat: torch.Tensor, segments: Sequence[Segment], cache: bool) -> torch.Tensor | None:
        d_in, d_out = self.base.in_features, self.base.out_features
        backend = self.routing.backend
        if backend == "auto":
            backend = "grouped" if len(segments) > 1 and grouped_supported(flat, d_in, d_out) else "loop"
        if backend == "loop":
            return loop_delta(flat, segments, self.module_name, d_out)
        if cache and self.module_name in self.routing.stacks:
            stack = self.routing.stacks[self.module_name]
        else:
            ends = self.routing.group_ends(segments, flat.device)
            stack = stack_for_grouped(segments, self.module_name, d_in, d_out, flat.dtype, flat.device, ends)
            if cache:
                self.routing.stacks[self.module_name] = stack
        return None if stack is None else grouped_delta(flat, stack)


def widen(segments: Sequence[Segment], factor: int) -> list[Segment]:
    """The same adapters over `factor` times as many tokens each (rows of 1 token -> rows of `factor`)."""
    return [Segment(s.adapter, s.start * factor, s.stop * factor) for s in segments]


# substrings of an enclosing module's name that mark an attention block or an MLP block
ATTENTION_SCOPES = ("attn", "attention")
MLP_SCOPES = ("mlp", "feed_forward", "ffn", "moe", "experts")
KINDS = ("attn", "mlp", "unembed")

LoraModule = MultiLoraLinear | MultiLoraExperts


def layer_kinds(model: CausalLM) -> dict[str, str]:
    """Which modules take LoRA, and as what: Linear modules inside an attention block ("attn"), inside
    an MLP block ("mlp"), the output embedding ("unembed"), and modules holding fused 3-D expert
    parameters ("experts", trained as "mlp"). Linear modules are found by the enclosing blocks' names,
    so any decoder's naming fits (q_proj or qkv_proj or query_key_value; gate_up_proj, fc1,
    dense_h_to_4h...), like PEFT's "all-linear"; experts by their role (3-D parameters), whatever
    their name. The router takes no LoRA: it is not a Linear in transformers 5, and nothing named
    "gate"/"router" outside the scopes is picked."""
    output = model.get_output_embeddings()
    kinds: dict[str, str] = {}
    for name, module in model.named_modules():
        if expert_parameters(module):
            kinds[name] = "experts"
            continue
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


def wrap_model(model: CausalLM, routing: Routing) -> dict[str, LoraModule]:
    """Replace every LoRA-taking Linear by a MultiLoraLinear and every fused-experts module by a
    MultiLoraExperts; returns them by module name. A model the engine cannot wrap is refused with an
    EngineInputError on `base_model` naming the architecture and what is missing."""
    arch = type(model).__name__
    kinds = layer_kinds(model)
    for name, kind in kinds.items():
        reason = unsupported_reason(model.get_submodule(name)) if kind == "experts" else None
        if reason is not None:
            module = model.get_submodule(name)
            raise EngineInputError(
                f"{arch}: cannot put LoRA on the experts {name} ({type(module).__name__}): {reason}; "
                "supported: gate_up_proj (E, 2I, H) and down_proj (E, H, I), or transposed (E, H, 2I) and (E, I, H), "
                "each with an optional (E, out) bias",
                field="base_model",
            )
    has_mlp = any(kind in ("mlp", "experts") for kind in kinds.values())
    if not any(kind == "attn" for kind in kinds.values()) or not has_mlp:
        raise EngineInputError(
            f"found no attention or no MLP Linear layers in {arch}; LoRA targets found: {sorted(kinds)[:8]}",
            field="base_model",
        )
    wrapped: dict[str, LoraModule] = {}
    for name, kind in kinds.items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        base = model.get_submodule(name)
        if kind == "experts":
            layer: LoraModule = MultiLoraExperts(base, name, routing)
        else:
            layer = MultiLoraLinear(cast(nn.Linear, base), name, kind, routing)
        setattr(parent, child, layer)
        wrapped[name] = layer
    return wrapped


def weight_kinds(layers: dict[str, LoraModule]) -> dict[str, str]:
    """{adapter weight name: kind}; an experts module has one weight per projection."""
    return {weight: layer.kind for layer in layers.values() for weight in layer.lora_shapes(1, "per_expert")}


def misfit(layers: dict[str, LoraModule], weights: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> str | None:
    """The first adapter weight that does not fit these layers (unknown, or shaped for another model)."""
    expected: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}
    for layer in layers.values():
        expected.update(layer.lora_shapes(0, "per_expert"))
    for name, (lora_a, lora_b) in weights.items():
        if name not in expected:
            return name
        want_a, want_b = expected[name]
        if not (_fits(tuple(lora_a.shape), want_a) and _fits(tuple(lora_b.shape), want_b)):
            return name
    return None


def _fits(shape: tuple[int, ...], want: tuple[int, ...]) -> bool:
    """Same shape except the rank (0 in `want`) and an expert dim that may be 1 (a shared factor)."""
    if len(shape) != len(want):
        return False
    return all(
        w == 0 or s == w or (len(want) == 3 and axis == 0 and s == 1) for axis, (s, w) in enumerate(zip(shape, want))
    )
