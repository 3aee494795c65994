"""LoRA on fused mixture-of-experts weights: every token gets the delta of the experts its router chose,
from the adapter that owns the token.

transformers 5 keeps a layer's experts as 3-D parameters in one module (`Qwen3MoeExperts`,
`DeepseekV3Experts`, `MixtralExperts`...): `gate_up_proj (E, 2I, H)` and `down_proj (E, H, I)`, called as
`experts(hidden (M, H), top_k_index (M, k), top_k_weights (M, k))` with the hidden states flattened in
token order, the same order as the routing's token segments. `MultiLoraExperts` replaces such a module
and computes, per expert e and its tokens x (the eager expert loop of transformers, plus the deltas):

    gate_up = x @ W_gu[e].T + s * (x @ A_gu[e].T) @ B_gu[e].T         # A_gu (E|1, r, H), B_gu (E, 2I, r)
    h       = act(gate) * up
    out     = h @ W_d[e].T  + s * (h @ A_d[e].T)  @ B_d[e].T          # A_d (E, r, I),   B_d (E|1, H, r)

with A, B and s of the adapter owning each token; a factor whose dim 0 is 1 is shared by all experts
(the shared-outer layout, Tinker's), else it is expert e's own (per-expert). The router takes no LoRA.
Adapter tensors are named `<experts module>.gate_up_proj` / `.down_proj`, each an (A, B) pair.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, cast

import torch
import torch.nn.functional as F
from torch import nn

from .lora_math import Segment, check_segments

if TYPE_CHECKING:
    from .lora_layer import Routing

PROJECTIONS = ("gate_up_proj", "down_proj")
Shapes = dict[str, tuple[tuple[int, ...], tuple[int, ...]]]  # weight name -> (A shape, B shape)


def expert_parameters(module: nn.Module) -> list[str]:
    """The module's own 3-D parameters: what marks a module holding fused experts."""
    return [name for name, p in module.named_parameters(recurse=False) if p.dim() == 3]


def unsupported_reason(module: nn.Module) -> str | None:
    """Why `MultiLoraExperts` cannot wrap this experts module, or None when it can."""
    own = dict(module.named_parameters(recurse=False))
    gate_up, down = own.get("gate_up_proj"), own.get("down_proj")
    if gate_up is None or down is None or gate_up.dim() != 3 or down.dim() != 3:
        return f"3-D parameters {sorted(own)} are not gate_up_proj + down_proj"
    experts, two_inner, hidden = gate_up.shape
    if tuple(down.shape) != (experts, hidden, two_inner // 2) or two_inner % 2:
        return (
            f"gate_up_proj {tuple(gate_up.shape)} and down_proj {tuple(down.shape)} are not laid out as "
            "(E, 2I, H) and (E, H, I) (concatenated gate/up, out x in)"
        )
    if set(own) != {"gate_up_proj", "down_proj"}:
        return f"expert biases or extra parameters {sorted(set(own) - {'gate_up_proj', 'down_proj'})}"
    if not callable(getattr(module, "act_fn", None)):
        return "no act_fn"
    return None


class MultiLoraExperts(nn.Module):
    kind = "mlp"  # trained when LoraSpec.train_mlp is set

    def __init__(self, base: nn.Module, module_name: str, routing: Routing):
        super().__init__()
        self.base = base
        self.module_name = module_name
        self.routing = routing
        experts, two_inner, hidden = cast(torch.Tensor, base.gate_up_proj).shape
        self.num_experts, self.hidden, self.inner = int(experts), int(hidden), int(two_inner) // 2

    def lora_shapes(self, rank: int, layout: str) -> Shapes:
        """Each projection's (A, B) shapes; a shared-outer factor has one "expert"."""
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
        """(M, H) -> (M, H): the eager expert loop with each token's adapter's expert deltas."""
        gate_up_w = cast(torch.Tensor, self.base.gate_up_proj)  # (E, 2I, H)
        down_w = cast(torch.Tensor, self.base.down_proj)  # (E, H, I)
        act_fn = cast(Callable[[torch.Tensor], torch.Tensor], self.base.act_fn)
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
            gate_up = F.linear(x, gate_up_w[expert]) + self._delta(x, owners, segments, "gate_up_proj", expert)
            gate, up = gate_up.chunk(2, dim=-1)
            h = act_fn(gate) * up  # (n, I)
            out = F.linear(h, down_w[expert]) + self._delta(h, owners, segments, "down_proj", expert)
            out = out * top_k_weights[token_idx, top_k_pos, None]
            final = final.index_add(0, token_idx, out.to(final.dtype))
        return final

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
