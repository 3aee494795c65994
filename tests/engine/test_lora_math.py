"""Every LoRA implementation equals the contract in `lora_math`'s docstring, forward and gradients,
with ranks 1, 8 and 32 and a base-only segment; routing refuses segments that do not cover the batch."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gpu_runner.lora_layer import MultiLoraLinear, Routing
from gpu_runner.lora_math import Segment, grouped_delta, loop_delta, stack_for_grouped

D_IN, D_OUT = 16, 24


class Pair:
    """An adapter as the layer sees it: one module's A and B, and the scale."""

    def __init__(self, rank: int, scale: float, seed: int):
        g = torch.Generator().manual_seed(seed)
        self.scale = scale
        self.a = torch.randn(rank, D_IN, generator=g).requires_grad_(True)
        self.b = torch.randn(D_OUT, rank, generator=g).requires_grad_(True)

    def pair(self, module_name: str):
        return (self.a, self.b) if module_name == "proj" else None


def contract(x: torch.Tensor, segments: list[Segment]) -> torch.Tensor:
    """The docstring's reference, written out again here: a Python loop over segments."""
    rows = []
    for seg in segments:
        piece = x[seg.start : seg.stop]
        if seg.adapter is None:
            rows.append(torch.zeros(piece.shape[0], D_OUT))
        else:
            a, b = seg.adapter.pair("proj")
            rows.append(seg.adapter.scale * (piece @ a.T) @ b.T)
    return torch.cat(rows)


def _case():
    adapters = [Pair(1, 2.0, 1), Pair(8, 0.5, 2), None, Pair(32, 1.0 / 32, 3)]
    sizes = [5, 9, 4, 7]
    segments, start = [], 0
    for adapter, n in zip(adapters, sizes):
        segments.append(Segment(adapter, start, start + n))
        start += n
    x = torch.randn(start, D_IN, generator=torch.Generator().manual_seed(9)).requires_grad_(True)
    return adapters, segments, x


def _grads(out: torch.Tensor, x: torch.Tensor, adapters) -> list[torch.Tensor]:
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(4))
    leaves = [x] + [t for a in adapters if a is not None for t in (a.a, a.b)]
    return list(torch.autograd.grad(out, leaves, upstream))


@pytest.mark.parametrize("implementation", ["loop", "grouped"])
def test_implementation_equals_the_contract_forward_and_gradients(implementation):
    adapters, segments, x = _case()
    expected = contract(x, segments)
    expected_grads = _grads(expected, x, adapters)
    if implementation == "loop":
        got = loop_delta(x, segments, "proj", D_OUT)
    else:
        got = grouped_delta(x, stack_for_grouped(segments, "proj", D_IN, D_OUT, x.dtype, x.device))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    for g, e in zip(_grads(got, x, adapters), expected_grads):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", ["loop", "grouped"])
def test_wrapped_linear_adds_the_contract_to_the_base_output(backend):
    adapters, segments, x = _case()
    base = nn.Linear(D_IN, D_OUT)
    routing = Routing(backend)
    layer = MultiLoraLinear(base, "proj", "mlp", routing)
    routing.segments = segments
    batched = x.view(5, 5, D_IN)  # (B, T, d_in): segments count the flattened tokens
    got = layer(batched)
    torch.testing.assert_close(got, (base(x) + contract(x, segments)).view(5, 5, D_OUT), rtol=1e-5, atol=1e-5)


def test_no_adapter_with_weights_leaves_the_base_output():
    x = torch.randn(6, D_IN)
    assert loop_delta(x, [Segment(None, 0, 6)], "proj", D_OUT) is None
    assert stack_for_grouped([Segment(Pair(4, 1.0, 1), 0, 6)], "other", D_IN, D_OUT, x.dtype, x.device) is None


def test_routing_refuses_segments_that_do_not_cover_the_batch():
    routing = Routing()
    with pytest.raises(ValueError, match="contiguous"):
        routing.segments = [Segment(None, 0, 3), Segment(None, 4, 6)]
    with pytest.raises(ValueError, match="contiguous"):
        routing.segments = [Segment(None, 0, 0)]
    layer = MultiLoraLinear(nn.Linear(D_IN, D_OUT), "proj", "mlp", routing)
    routing.segments = [Segment(Pair(2, 1.0, 1), 0, 4)]
    with pytest.raises(ValueError, match="cover 4 tokens but the batch has 6"):
        layer(torch.randn(6, D_IN))
