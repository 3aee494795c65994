"""LoRA on fused mixture-of-experts weights: every token gets the delta of the experts its router chose,
from the adapter that owns the token.

transformers 5 keeps a layer's experts as 3-D parameters in one module (`Qwen3MoeExperts`,
`DeepseekV3Experts`, `MixtralExperts`...): `gate_up_proj (E, 2I, H)` and `down_proj (E, H, I)`, called as
`experts(hidden (M, H), top_k_index (M, k), top_k_weights (M, k))` with the hidden states flattened in
token order, the same order as the routing's token segments. `MultiLoraExperts` replaces such a module
and computes, per expert e and its tokens x (the eager expert loop of transformers, plus the deltas):

    gate_up = x @ W_gu[e].T + b_gu[e] + s * (x @ A_gu[e].T) @ B_gu[e].T   # A_gu (E|1, r, H), B_gu (E, 2I, r)
    h       = gate(gate_up)
    out     = h @ W_d[e].T  + b_d[e]  + s * (h @ A_d[e].T)  @ B_d[e].T    # A_d (E, r, I),   B_d (E|1, H, r)

with A, B and s of the adapter owning each token; a factor whose dim 0 is 1 is shared by all experts
(the shared-outer layout, Tinker's), else it is expert e's own (per-expert). The router takes no LoRA.
gpt-oss's `GptOssExperts` differs in three ways, all the base module's own: weights stored in x out
(`is_transposed`: `gate_up_proj (E, H, 2I)`, `down_proj (E, I, H)`), biases `b_gu (E, 2I)` and
`b_d (E, H)`, and `gate` its `_apply_gate` (gate/up interleaved in the 2I columns, clamped at `limit`,
`(up + 1) * gate * sigmoid(alpha * gate)`); else the biases are absent and gate = act(first half) *
second half. B_gu's 2I rows follow the base's column order, so the delta lands on the same gate/up
columns peft's `target_parameters` would (peft reads an `is_transposed` parameter as (E, in, out)).
Adapter tensors are named `<experts module>.gate_up_proj` / `.down_proj`, each an (A, B) pair.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, cast

import torch
import torch.nn.functional as F
from torch import nn

from .expert_grouped import grouped_experts_supported, grouped_forward
from .lora_math import Segment, check_segments

if TYPE_CHECKING:
    from .lora_layer import Routing

PROJECTIONS = ("gate_up_proj", "down_proj")
Shapes = dict[str, tuple[tuple[int, ...], tuple[int, ...]]]  # weight name -> (A shape, B shape)


def expert_parameters(module: nn.Module) -> list[str]:
    """The module's own 3-D parameters: what marks a module holding fused experts."""
    return [name for name, p in module.named_parameters(recurse=False) if p.dim() == 3]


def expert_layout(module: nn.Module) -> tuple[bool, int, int, int]:
    """(transposed, E, H, I) of a fused experts module: transposed modules (gpt-oss) store weights as
    in x out, `gate_up_proj (E, H, 2I)` and `down_proj (E, I, H)`; the others out x in."""
    gate_up = cast(torch.Tensor, module.gate_up_proj)
    transposed = bool(getattr(module, "is_transposed", False))
    experts, first, second = gate_up.shape
    hidden, two_inner = (first, second) if transposed else (second, first)
    return transposed, int(experts), int(hidden), int(two_inner) // 2


def unsupported_reason(module: nn.Module) -> str | None:
    """Why `MultiLoraExperts` cannot wrap this experts module, or None when it can."""
    own = dict(module.named_parameters(recurse=False))
    gate_up, down = own.get("gate_up_proj"), own.get("down_proj")
    if gate_up is None or down is None or gate_up.dim() != 3 or down.dim() != 3:
        return f"3-D parameters {sorted(own)} are not gate_up_proj + down_proj"
    transposed, experts, hidden, inner = expert_layout(module)
    want_down = (experts, inner, hidden) if transposed else (experts, hidden, inner)
    if tuple(down.shape) != want_down or gate_up.shape[2 if transposed else 1] % 2:
        layout = "(E, H, 2I) and (E, I, H) (in x out)" if transposed else "(E, 2I, H) and (E, H, I) (out x in)"
        return f"gate_up_proj {tuple(gate_up.shape)} and down_proj {tuple(down.shape)} are not laid out as {layout}"
    biases = {"gate_up_proj_bias": (experts, 2 * inner), "down_proj_bias": (experts, hidden)}
    extra = sorted(set(own) - {"gate_up_proj", "down_proj"} - set(biases))
    if extra:
        return f"extra expert parameters {extra}"
    misshaped = [n for n, shape in biases.items() if n in own and tuple(own[n].shape) != shape]
    if misshaped:
        return f"expert biases {misshaped} are not (E, out)"
    if getattr(module, "has_post_expert_norm", False):
        return "a norm after each expert"
    if not callable(getattr(module, "_apply_gate", None)) and not callable(getattr(module, "act_fn", None)):
        return "no _apply_gate or act_fn"
    return None


class MultiLoraExperts(nn.Module):
    kind = "mlp"  # trained when LoraSpec.train_mlp is set

    def __init__(self, base: nn.Module, module_name: str, routing: Routing):
        super().__init__()
        self.base = base
        self.module_name = module_name
        self.routing = routing
        self.transposed, self.num_experts, self.hidden, self.inner = expert_layout(base)

    def lora_shapes(self, rank: int, layout: str) -> Shapes:
        """Each projection's (A, B) shapes; a shared-outer factor has one "expert". B's output rows follow
        the base weight's own output order (gpt-oss's interleaved gate/up columns included)."""
        experts, outer = self.num_experts, (1 if layout == "shared_outer" else self.num_experts)
        return {
            f"{self.module_name}.gate_up_proj": ((outer, rank, self.hidden), (experts, 2 * self.inner, rank)),
            f"{self.module_name}.down_proj": ((experts, rank, self.inner), (outer, self.hidden, rank)),
        }

    def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor):
        segments = self.routing.segments
        names = [f"{self.module_name}.{p}" for p in PROJECTIONS]
        if not any(s.adapter is not None and s.adapter.pair(n) is not None for s in segments for n in names):
            return self.base(hidden_states, top_k_index, top_k_weights)
        check_segments(segments, hidden_states.shape[0])
        return self.forward_with(hidden_states, top_k_index, top_k_weights, segments)

    def forward_with(
        self, hidden: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor, segments: Sequence[Segment]
    ) -> torch.Tensor:
        """(M, H) -> (M, H): the experts with each token's adapter's expert deltas, by the routing's backend:
        grouped GEMMs over (expert, tenant) (`expert_grouped`; "auto" picks them on CUDA bf16), or the
        eager loop over experts of transformers plus the deltas."""
        backend = self.routing.backend
        if backend == "auto":
            dims = (self.hidden, self.inner)
            backend = "grouped" if grouped_experts_supported(hidden, dims) else "loop"
        if backend == "grouped":
            return grouped_forward(self, hidden, top_k_index, top_k_weights, segments)
        return self.loop_forward(hidden, top_k_index, top_k_weights, segments)

    def loop_forward(
        self, hidden: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor, segments: Sequence[Segment]
    ) -> torch.Tensor:
        """The eager loop over the experts hit, each with a loop over the tenants' deltas."""
        counts = torch.tensor([s.stop - s.start for s in segments])
        owner = torch.repeat_interleave(torch.arange(len(segments)), counts).to(hidden.device)  # (M,) segment index
        final = torch.zeros_like(hidden)
        with torch.no_grad():
            hit = torch.unique(top_k_index).tolist()
        for expert in hit:
            if not 0 <= expert < self.num_experts:
                continue  # transformers' "no expert" index
            token_idx, top_k_pos = torch.where(top_k_index == expert)  # (n,), (n,): tokens routed to it
            x = hidden[token_idx]  # (n, H)
            owners = owner[token_idx]
            gate_up = self._base_proj("gate_up_proj", x, expert)
            gate_up = gate_up + self._delta(x, owners, segments, "gate_up_proj", expert)
            h = self.gate(gate_up)  # (n, I)
            out = self._base_proj("down_proj", h, expert) + self._delta(h, owners, segments, "down_proj", expert)
            out = out * top_k_weights[token_idx, top_k_pos, None]
            final = final.index_add(0, token_idx, out.to(final.dtype))
        return final

    def _base_proj(self, projection: str, x: torch.Tensor, expert: int) -> torch.Tensor:
        """(n, d_in) -> (n, d_out): expert `expert`'s frozen projection, with its bias when it has one."""
        weight = cast(torch.Tensor, getattr(self.base, projection))[expert]
        out = x @ weight if self.transposed else F.linear(x, weight)
        bias = getattr(self.base, f"{projection}_bias", None)
        return out if bias is None else out + bias[expert]

    def gate(self, gate_up: torch.Tensor) -> torch.Tensor:
        """(n, 2I) -> (n, I): the module's own gating (gpt-oss: interleaved, clamped swiglu), else
        act(gate) * up over concatenated halves."""
        apply_gate = getattr(self.base, "_apply_gate", None)
        if callable(apply_gate):
            return apply_gate(gate_up)
        gate, up = gate_up.chunk(2, dim=-1)
        return cast(Callable[[torch.Tensor], torch.Tensor], self.base.act_fn)(gate) * up

    def _delta(
        self, x: torch.Tensor, owners: torch.Tensor, segments: Sequence[Segment], projection: str, expert: int
    ) -> torch.Tensor | float:
        """(n, d_in) -> (n, d_out): expert `expert`'s LoRA delta of each token's adapter (0. when none)."""
        name = f"{self.module_name}.{projection}"
        delta: torch.Tensor | None = None
        for index, seg in enumerate(segments):
            pair = seg.adapter.pair(name) if seg.adapter is not None else None
            if pair is None:
                continue
            rows = (owners == index).nonzero().squeeze(1)
            if rows.numel() == 0:
                continue
            lora_a, lora_b = pair
            a = lora_a[expert if lora_a.shape[0] > 1 else 0].to(x.dtype)  # (r, d_in)
            b = lora_b[expert if lora_b.shape[0] > 1 else 0].to(x.dtype)  # (d_out, r)
            piece = ((x[rows] @ a.t()) @ b.t()) * seg.adapter.scale  # type: ignore[union-attr]
            if delta is None:
                delta = x.new_zeros(x.shape[0], b.shape[0])
            delta = delta.index_add(0, rows, piece)
        return 0.0 if delta is None else delta
