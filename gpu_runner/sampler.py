"""Batched, KV-cached generation across adapters.

All rows (every sample of every request) go through the model together: prompts are left-padded,
rows are grouped by adapter so each LoRA layer sees contiguous segments, and each row draws from its
own seeded generator so a request's output does not depend on what else shares the batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache

from .lora_layer import LoraWeights
from .types import SampledSequence, SamplingParams, StopReason


@dataclass
class SampleRow:
    adapter: LoraWeights | None  # None: the bare base model
    prompt: list[int]
    params: SamplingParams
    generator: torch.Generator
    stop_token_ids: frozenset[int]
    stop_strings: tuple[str, ...]
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    stop_reason: StopReason | None = None

    def finished(self) -> bool:
        return self.stop_reason is not None

    def result(self) -> SampledSequence:
        return SampledSequence(tokens=self.tokens, logprobs=self.logprobs, stop_reason=self.stop_reason or "length")


def row_generator(seed: int | None, sample_index: int) -> torch.Generator:
    """Sample i of a seeded request draws from its own stream: reproducible, independent of batching."""
    generator = torch.Generator()
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed((int(seed) * 1_000_003 + sample_index) % (2**63 - 1))
    return generator


def next_tokens(logits: torch.Tensor, rows: list[SampleRow]) -> tuple[list[int], list[float]]:
    """Pick one token per row from (B, V) float32 logits; returns tokens and their logprobs.

    Vectorised over rows; randomness is one uniform per row from that row's own generator
    (inverse-CDF sampling), so a row's draw never depends on its neighbours. The reported logprob
    is under the temperature-scaled distribution before top-k/top-p truncation (temperature 0
    reports the plain distribution), so at temperature 1 it equals `forward`."""
    device = logits.device
    temperature = torch.tensor([r.params.temperature for r in rows], device=device)
    greedy = temperature == 0
    logprobs = torch.log_softmax(logits / torch.where(greedy, 1.0, temperature)[:, None], dim=-1)  # (B, V)
    filtered = _truncate(logprobs, [r.params.top_k for r in rows], [r.params.top_p for r in rows])
    cdf = torch.cumsum(torch.softmax(filtered, dim=-1), dim=-1)  # (B, V)
    uniform = torch.cat([torch.rand(1, generator=r.generator) for r in rows]).to(device)
    drawn = torch.searchsorted(cdf, (uniform * cdf[:, -1])[:, None]).squeeze(1).clamp(max=logits.shape[-1] - 1)
    tokens = torch.where(greedy, logits.argmax(dim=-1), drawn)
    chosen = logprobs.gather(1, tokens[:, None]).squeeze(1)
    return tokens.tolist(), chosen.tolist()


def _truncate(logprobs: torch.Tensor, top_k: list[int], top_p: list[float]) -> torch.Tensor:
    out = logprobs
    vocab = out.shape[-1]
    ks = [k if 0 < k < vocab else vocab for k in top_k]
    if min(ks) < vocab:
        kth = torch.topk(out, max(ks), dim=-1).values.gather(1, torch.tensor(ks, device=out.device)[:, None] - 1)
        out = out.masked_fill(out < kth, float("-inf"))
    if min(top_p) < 1.0:
        sorted_lp, order = torch.sort(out, dim=-1, descending=True)
        probs = torch.softmax(sorted_lp, dim=-1)
        drop_sorted = torch.cumsum(probs, -1) - probs > torch.tensor(top_p, device=out.device)[:, None]
        drop = torch.zeros_like(drop_sorted).scatter(1, order, drop_sorted)  # keeps the token crossing top_p
        out = out.masked_fill(drop, float("-inf"))
    return out


def generate(
    model, rows: list[SampleRow], decode: Callable[[list[int]], str], pad_id: int, device: torch.device
) -> None:
    """Fill each row's tokens/logprobs/stop_reason in place. Rows must be grouped by adapter, and
    the model's routing must already name their segments."""
    width = max(len(r.prompt) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, width - len(row.prompt) :] = torch.tensor(row.prompt)
        mask[i, width - len(row.prompt) :] = 1
    input_ids, mask = input_ids.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache()
    steps = max(r.params.max_tokens for r in rows)
    with torch.no_grad():
        out = model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=positions,
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        for step in range(steps):
            tokens, logprobs = next_tokens(out.logits[:, -1, :].float(), rows)  # (B, V) -> B picks
            chosen = []
            for row, token, logprob in zip(rows, tokens, logprobs):
                if row.finished():
                    chosen.append(pad_id)
                    continue
                row.tokens.append(token)
                row.logprobs.append(logprob)
                _update_stop(row, decode)
                chosen.append(token)
            if all(r.finished() for r in rows) or step == steps - 1:
                break
            mask = torch.cat([mask, torch.ones((len(rows), 1), dtype=mask.dtype, device=device)], dim=1)
            positions = positions[:, -1:] + 1
            out = model(
                input_ids=torch.tensor(chosen, device=device)[:, None],
                attention_mask=mask,
                position_ids=positions,
                cache=cache,
                use_cache=True,
            )
    for row in rows:
        if row.stop_reason is None:
            row.stop_reason = "length"


def _update_stop(row: SampleRow, decode: Callable[[list[int]], str]) -> None:
    if (
        row.tokens[-1] in row.stop_token_ids
        or row.stop_strings
        and any(s in decode(row.tokens) for s in row.stop_strings)
    ):
        row.stop_reason = "stop"
    elif len(row.tokens) >= row.params.max_tokens:
        row.stop_reason = "length"
