"""The fused experts' forward with every tenant's expert LoRA as grouped GEMMs, no Python loop over
experts or tenants: the same contract as `MultiLoraExperts`'s loop (its docstring), one
`torch.nn.functional.grouped_mm` per matmul.

The (token, chosen expert) pairs are sorted by (expert, slot), a slot being each tenant that has expert
LoRA plus one shared by the tenants that have none. The base projections are grouped by expert (the
groups of one expert are contiguous), the LoRA factors by (expert, slot), stacked with their ranks
zero-padded to a common multiple of 8 and the scale folded into A. A factor shared by all experts
(the shared-outer layout) is applied per tenant instead, on the token-ordered activations whose tenants
are the routing's contiguous segments: gate/up's shared A before the tokens are copied per chosen
expert, and down's shared B after the chosen experts' outputs are summed per token, which is exact
because `sum_j w_j (h_j A_j^T) B^T = (sum_j w_j h_j A_j^T) B^T`. No shared factor is ever copied per
expert. Where tenants mix layouts, a shared factor is expanded over the experts for that projection.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

import torch
import torch.nn.functional as F

from .lora_math import RANK_ALIGN, Segment

if TYPE_CHECKING:
    from .expert_lora import MultiLoraExperts

Pair = tuple[torch.Tensor, torch.Tensor]


def grouped_experts_supported(hidden: torch.Tensor, dims: Sequence[int]) -> bool:
    """Where grouped_mm is the fast path: CUDA bf16 on SM >= 80, every dimension 16-byte aligned."""
    if hidden.device.type != "cuda" or hidden.dtype != torch.bfloat16:
        return False
    major, _ = torch.cuda.get_device_capability(hidden.device)
    return major >= 8 and all(d % RANK_ALIGN == 0 for d in dims)


def grouped_forward(
    layer: MultiLoraExperts,
    hidden: torch.Tensor,
    top_k_index: torch.Tensor,
    top_k_weights: torch.Tensor,
    segments: Sequence[Segment],
) -> torch.Tensor:
    """(M, H) -> (M, H), as `MultiLoraExperts.forward_with`'s loop computes it."""
    experts, device, dtype = layer.num_experts, hidden.device, hidden.dtype
    pairs = {p: _pairs(layer, p, segments) for p in ("gate_up_proj", "down_proj")}
    scales = [float(s.adapter.scale) if s.adapter is not None else 0.0 for s in segments]
    with_lora = [g for g in range(len(segments)) if any(pairs[p][g] is not None for p in pairs)]
    slot_of = [with_lora.index(g) if g in with_lora else len(with_lora) for g in range(len(segments))]
    slots = len(with_lora) + (len(with_lora) < len(segments))
    ends = layer.routing.group_ends(segments, device)  # (T,) int32: the tenants' token segments
    counts = torch.tensor([s.stop - s.start for s in segments])
    owner = torch.repeat_interleave(torch.tensor(slot_of), counts).to(device)  # (M,) each token's slot

    # (token, expert) pairs, sorted by (expert, slot); "no expert" indices get weight 0, so no sync
    tokens, k = top_k_index.shape
    token = torch.arange(tokens, device=device).repeat_interleave(k)  # (S,)
    expert = top_k_index.reshape(-1)
    weight = top_k_weights.reshape(-1)
    valid = (expert >= 0) & (expert < experts)
    weight = torch.where(valid, weight, torch.zeros_like(weight))
    expert = expert.clamp(0, experts - 1)
    key = expert * slots + owner[token]
    order = torch.argsort(key, stable=True)
    token, expert, weight, key = token[order], expert[order], weight[order], key[order]
    per_group = torch.bincount(key, minlength=experts * slots)  # (E * slots,)
    group_offs = per_group.cumsum(0).to(torch.int32)
    expert_offs = per_group.view(experts, slots).sum(1).cumsum(0).to(torch.int32)

    def factors(projection: str, d_in: int, d_out: int) -> tuple[torch.Tensor | None, torch.Tensor | None, str]:
        """(A stack, B stack, which factor is per tenant), kept on the routing without grad (decode steps)."""
        key = f"{layer.module_name}.{projection}"
        cache = not torch.is_grad_enabled()
        if cache and key in layer.routing.expert_stacks:
            return layer.routing.expert_stacks[key]
        built = build(projection, d_in, d_out)
        if cache:
            layer.routing.expert_stacks[key] = built
        return built

    def build(projection: str, d_in: int, d_out: int) -> tuple[torch.Tensor | None, torch.Tensor | None, str]:
        """(A stack, B stack, which factor is per tenant: "a", "b" or "")."""
        present = [p for p in pairs[projection] if p is not None]
        if not present:
            return None, None, ""
        rank = -(-max(a.shape[1] for a, _ in present) // RANK_ALIGN) * RANK_ALIGN
        a_shared = all(a.shape[0] == 1 for a, _ in present)
        b_shared = all(b.shape[0] == 1 for _, b in present)
        tenant_side = "a" if projection == "gate_up_proj" and a_shared else ""
        tenant_side = "b" if projection == "down_proj" and b_shared else tenant_side
        stacks = []
        for side, d_first in (("a", d_in), ("b", d_out)):
            if side == tenant_side:
                stacks.append(_tenant_stack(pairs[projection], scales, side, rank, d_first, dtype, device))
            else:
                stacks.append(
                    _group_stack(pairs[projection], scales, with_lora, side, experts, rank, d_first, dtype, device)
                )
        return stacks[0], stacks[1], tenant_side

    x = hidden[token]  # (S, H)
    gate_up = _base(layer, "gate_up_proj", x, expert, expert_offs)
    a_stack, b_stack, tenant_side = factors("gate_up_proj", layer.hidden, 2 * layer.inner)
    if a_stack is not None and b_stack is not None:
        if tenant_side == "a":  # shared A: per tenant on the token-ordered hidden states, then per pair
            xa = F.grouped_mm(hidden.contiguous(), a_stack, offs=ends)[token]
        else:
            xa = F.grouped_mm(x, a_stack, offs=group_offs)
        gate_up = gate_up + F.grouped_mm(xa, b_stack, offs=group_offs)
    h = layer.gate(gate_up)  # (S, I)
    out = _base(layer, "down_proj", h, expert, expert_offs)
    a_stack, b_stack, tenant_side = factors("down_proj", layer.inner, layer.hidden)
    after_sum = None
    if a_stack is not None and b_stack is not None:
        ha = F.grouped_mm(h.contiguous(), a_stack, offs=group_offs)  # (S, R)
        if tenant_side == "b":  # shared B: sum the chosen experts' (weighted) h A^T per token first
            weighted = (ha * weight[:, None]).to(ha.dtype)
            summed = ha.new_zeros(tokens, ha.shape[1]).index_add(0, token, weighted)
            after_sum = F.grouped_mm(summed, b_stack, offs=ends)  # (M, H)
        else:
            out = out + F.grouped_mm(ha, b_stack, offs=group_offs)
    final = torch.zeros_like(hidden).index_add(0, token, (out * weight[:, None]).to(dtype))
    return final if after_sum is None else final + after_sum.to(dtype)


def _pairs(layer: MultiLoraExperts, projection: str, segments: Sequence[Segment]) -> list[Pair | None]:
    name = f"{layer.module_name}.{projection}"
    return [s.adapter.pair(name) if s.adapter is not None else None for s in segments]


def _base(
    layer: MultiLoraExperts, projection: str, x: torch.Tensor, expert: torch.Tensor, offs: torch.Tensor
) -> torch.Tensor:
    """Every pair's frozen projection by its expert (in x out for grouped_mm), plus its bias."""
    weight = cast(torch.Tensor, getattr(layer.base, projection))
    out = F.grouped_mm(x.contiguous(), weight if layer.transposed else weight.transpose(-1, -2), offs=offs)
    bias = getattr(layer.base, f"{projection}_bias", None)
    return out if bias is None else out + bias[expert]


def _prepared(pair: Pair, scale: float, side: str, rank: int, dtype: torch.dtype) -> torch.Tensor:
    """The factor as (E|1, d_first, R) for `x @ it`: A^T scaled (d_in, R) or B^T (R, d_out) padded."""
    lora_a, lora_b = pair
    if side == "a":
        a = F.pad((lora_a * scale).to(dtype), (0, 0, 0, rank - lora_a.shape[1]))  # (E|1, R, d_in)
        return a.transpose(-1, -2)  # (E|1, d_in, R)
    b = F.pad(lora_b.to(dtype), (0, rank - lora_b.shape[2]))  # (E|1, d_out, R)
    return b.transpose(-1, -2)  # (E|1, R, d_out)


def _tenant_stack(
    pairs: list[Pair | None], scales: list[float], side: str, rank: int, d_other: int, dtype, device
) -> torch.Tensor:
    """(T, ., .): each tenant's shared factor, zeros for a tenant without one."""
    shape = (d_other, rank) if side == "a" else (rank, d_other)
    blocks = [
        _prepared(p, s, side, rank, dtype)[0] if p is not None else torch.zeros(shape, dtype=dtype, device=device)
        for p, s in zip(pairs, scales)
    ]
    return torch.stack(blocks).contiguous()


def _group_stack(
    pairs: list[Pair | None],
    scales: list[float],
    with_lora: list[int],
    side: str,
    experts: int,
    rank: int,
    d_other: int,
    dtype,
    device,
) -> torch.Tensor:
    """(E * slots, ., .): group e * slots + slot holds that slot's tenant's expert-e factor (a shared one
    expanded), zeros for a tenant without this projection's LoRA and for the no-LoRA slot."""
    shape = (experts, d_other, rank) if side == "a" else (experts, rank, d_other)
    slots = []
    for g in with_lora:
        pair = pairs[g]
        if pair is None:
            slots.append(torch.zeros(shape, dtype=dtype, device=device))
        else:
            slots.append(_prepared(pair, scales[g], side, rank, dtype).expand(shape))
    if len(with_lora) < len(pairs):
        slots.append(torch.zeros(shape, dtype=dtype, device=device))
    return torch.stack(slots, dim=1).reshape(-1, *shape[1:]).contiguous()  # (E, slots, ., .) -> (E*slots, ., .)
