"""Chunked target logprobs equal the full log_softmax path, values and gradients, for 1-D and top-K
targets, with the head's own LoRA; and no vocabulary-sized tensor for the whole batch ever exists."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from gpu_runner.logprobs import Head, target_logprobs
from gpu_runner.lora_layer import MultiLoraLinear, Routing
from gpu_runner.lora_math import Segment
from gpu_runner.types import ForwardBackward

from .reference import new_adapter, random_sequence, sft_datum

H, V, N = 12, 50, 23


class HeadLora:
    def __init__(self, seed: int):
        g = torch.Generator().manual_seed(seed)
        self.scale = 0.7
        self.a = torch.randn(3, H, generator=g).requires_grad_(True)
        self.b = torch.randn(V, 3, generator=g).requires_grad_(True)

    def pair(self, module_name):
        return self.a, self.b


@pytest.mark.parametrize("k", [1, 4])
@pytest.mark.parametrize("softcap", [None, 3.0])
def test_chunked_equals_full_log_softmax_with_gradients(k, softcap):
    g = torch.Generator().manual_seed(0)
    base = nn.Linear(H, V, bias=False)
    head = Head(MultiLoraLinear(base, "lm_head", "unembed", Routing()), softcap=softcap)
    adapters = [HeadLora(1), None, HeadLora(2)]
    segments = [Segment(adapters[0], 0, 8), Segment(None, 8, 15), Segment(adapters[2], 15, N)]
    hidden = torch.randn(N, H, generator=g).requires_grad_(True)
    targets = torch.randint(0, V, (N, k), generator=g)
    upstream = torch.randn(N, k, generator=g)
    leaves = [hidden, adapters[0].a, adapters[0].b, adapters[2].a, adapters[2].b]

    # the full path, written independently: one (N, V) logits matrix, log_softmax, gather
    delta = torch.zeros(N, V)
    for seg in segments:
        if seg.adapter is not None:
            x = hidden[seg.start : seg.stop]
            delta[seg.start : seg.stop] = seg.adapter.scale * (x @ seg.adapter.a.T) @ seg.adapter.b.T
    logits = base(hidden) + delta
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    full = torch.log_softmax(logits, -1).gather(-1, targets)
    full_grads = torch.autograd.grad(full, leaves, upstream)

    chunked = target_logprobs(head, hidden, targets, segments, chunk_tokens=4)  # 6 chunks, cutting segments
    torch.testing.assert_close(chunked, full, rtol=1e-5, atol=1e-5)
    for got, expected in zip(torch.autograd.grad(chunked, leaves, upstream), full_grads):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


class LargestVocabTensor(TorchDispatchMode):
    """Records the most elements of any tensor an op produces whose last dimension is the vocabulary,
    views of the head's weight (its transpose is hidden x vocab) aside."""

    def __init__(self, vocab: int, weight: torch.Tensor):
        super().__init__()
        self.vocab, self.largest = vocab, 0
        self.weight_storage = weight.untyped_storage().data_ptr()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            vocab_sized = isinstance(t, torch.Tensor) and t.dim() >= 1 and t.shape[-1] == self.vocab
            if vocab_sized and t.untyped_storage().data_ptr() != self.weight_storage:
                self.largest = max(self.largest, t.numel())
        return out


def test_no_tokens_by_vocab_tensor_exists_in_forward_or_backward(engine):
    """The session engine scores 5 tokens per chunk: a pass of 8 x 30 tokens may hold 5 x vocab
    logits at a time, never 240 x vocab."""
    adapter_id = new_adapter(engine, rank=4, seed=8)
    data = [sft_datum(random_sequence(31, seed=80 + i)) for i in range(8)]
    vocab = engine.info.vocab_size
    with LargestVocabTensor(vocab, engine.head.module.weight) as probe:
        (result,) = engine.run_cycle([ForwardBackward(adapter_id, data)])
    assert result.ok, result.error
    tokens = sum(len(d.model_input) for d in data)
    assert probe.largest > 0  # the probe saw the chunks' logits
    assert probe.largest <= engine.chunk_tokens * vocab < tokens * vocab / 40
