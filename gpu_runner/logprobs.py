"""Target logprobs without vocabulary-sized activations.

A causal LM's head turns (tokens, hidden) into (tokens, vocab) logits. For a real vocabulary
(Qwen3: 151,936) the fp32 log-softmax of a whole batch is tens of GB, yet a loss reads one entry
per position (or K of them). Here the head runs over chunks of at most `chunk_tokens` tokens; each
chunk's logits live only inside that chunk, and under autograd each chunk is checkpointed, so
backward recomputes one chunk's logits at a time instead of keeping them all.

    logprob(t, k) = logit(t, target[t, k]) - logsumexp_v logit(t, v)          (in fp32)

The head's own LoRA (unembed) is applied per chunk with that chunk's slice of the token segments.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .lora_layer import MultiLoraLinear
from .lora_math import Segment

DEFAULT_CHUNK_BYTES = 128 * 2**20  # fp32 logits of one chunk; ~220 tokens at a 152k vocabulary


@dataclass(frozen=True)
class Head:
    """The output projection (LoRA-wrapped or plain) and the logit transform the model applies after it."""

    module: nn.Module
    softcap: float | None = None
    logit_scale: float = 1.0

    @classmethod
    def of(cls, model: Any) -> Head:
        """`model`: a Hugging Face causal LM (its config says how logits are scaled or capped)."""
        config = model.config
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        softcap = getattr(text, "final_logit_softcapping", None)
        scale = getattr(text, "logit_scale", None) or 1.0
        scaling = getattr(text, "logits_scaling", None)  # granite divides by it
        if scaling:
            scale = scale / float(scaling)
        return cls(model.get_output_embeddings(), float(softcap) if softcap else None, float(scale))

    def logits(self, hidden: torch.Tensor, segments: Sequence[Segment] | None) -> torch.Tensor:
        """(n, H) -> (n, V) fp32 logits of these tokens; `segments` cover them (None: no LoRA)."""
        if segments is not None and isinstance(self.module, MultiLoraLinear):
            out = self.module.forward_with(hidden, segments)
        elif isinstance(self.module, MultiLoraLinear):
            out = self.module.base(hidden)
        else:
            out = self.module(hidden)
        out = out.float()
        if self.logit_scale != 1.0:
            out = out * self.logit_scale
        if self.softcap is not None:
            out = torch.tanh(out / self.softcap) * self.softcap
        return out


def chunk_tokens_for(vocab_size: int, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> int:
    return max(16, chunk_bytes // (4 * vocab_size))


def slice_segments(segments: Sequence[Segment] | None, start: int, stop: int) -> list[Segment] | None:
    """The part of `segments` over tokens [start, stop), renumbered from 0."""
    if segments is None:
        return None
    out = []
    for seg in segments:
        lo, hi = max(seg.start, start), min(seg.stop, stop)
        if lo < hi:
            out.append(Segment(seg.adapter, lo - start, hi - start))
    return out


def target_logprobs(
    head: Head,
    hidden: torch.Tensor,
    targets: torch.Tensor,
    segments: Sequence[Segment] | None,
    chunk_tokens: int,
) -> torch.Tensor:
    """hidden (N, H), targets (N, K) int64 -> (N, K) fp32 logprobs, chunk by chunk."""
    pieces = []
    for start in range(0, hidden.shape[0], chunk_tokens):
        stop = min(start + chunk_tokens, hidden.shape[0])
        chunk_segments = slice_segments(segments, start, stop)
        args = (hidden[start:stop], targets[start:stop])
        if torch.is_grad_enabled() and hidden.requires_grad or _head_trains(head, chunk_segments):
            piece = checkpoint(_chunk_logprobs, head, *args, chunk_segments, use_reentrant=False)
        else:
            piece = _chunk_logprobs(head, *args, chunk_segments)
        pieces.append(piece)
    return torch.cat(pieces) if len(pieces) != 1 else pieces[0]  # (N, K)


def _head_trains(head: Head, segments: Sequence[Segment] | None) -> bool:
    if not torch.is_grad_enabled() or segments is None or not isinstance(head.module, MultiLoraLinear):
        return False
    name = head.module.module_name
    return any(s.adapter is not None and s.adapter.pair(name) is not None for s in segments)


def _chunk_logprobs(
    head: Head, hidden: torch.Tensor, targets: torch.Tensor, segments: Sequence[Segment] | None
) -> torch.Tensor:
    logits = head.logits(hidden, segments)  # (n, V) fp32
    return logits.gather(-1, targets) - torch.logsumexp(logits, dim=-1, keepdim=True)  # (n, K)


def topk_logprobs(
    head: Head, hidden: torch.Tensor, k: int, segments: Sequence[Segment] | None, chunk_tokens: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """No gradient: the k most likely tokens per position and their logprobs, (N, k) each."""
    values, tokens = [], []
    with torch.no_grad():
        for start in range(0, hidden.shape[0], chunk_tokens):
            stop = min(start + chunk_tokens, hidden.shape[0])
            logits = head.logits(hidden[start:stop], slice_segments(segments, start, stop))
            logprobs = logits - torch.logsumexp(logits, dim=-1, keepdim=True)
            top = torch.topk(logprobs, min(k, logprobs.shape[-1]), dim=-1)
            values.append(top.values)
            tokens.append(top.indices)
    return torch.cat(values), torch.cat(tokens)
