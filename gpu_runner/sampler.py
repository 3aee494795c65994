"""Batched, KV-cached generation across adapters, with prompt scoring from the same prefill.

All rows (every sample of every request) go through the model together: prompts are left-padded,
rows are grouped by adapter so each LoRA layer sees contiguous segments, and a row that finishes
leaves the batch (its cache rows are dropped). Randomness is counter-based: row i's uniform at step
t is a hash of (its seed stream, t) computed on the device, so a request's tokens depend on its
seed alone, never on what else shares the batch or when rows leave it. Stop strings are checked on
a bounded tail of the decoded text, not the whole sequence each step.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache

from .logprobs import Head, target_logprobs, topk_logprobs
from .lora_layer import Routing
from .lora_math import LoraWeights, Segment
from .types import SampledSequence, SamplingParams, StopReason

MASK32 = 0xFFFFFFFF


@dataclass
class PromptScoring:
    """What one row's prompt should be scored for (the scores land on the object)."""

    logprobs: bool = False
    topk: int = 0
    targets: list[list[int]] | None = None  # (n-1, K) token ids, -1 = none
    prompt_logprobs: list[float] | None = None
    topk_prompt_logprobs: list[list[tuple[int, float]]] | None = None
    target_prompt_logprobs: list[list[float]] | None = None


@dataclass
class SampleRow:
    adapter: LoraWeights | None  # None: the bare base model
    prompt: list[int]
    params: SamplingParams
    stream: int  # the row's seed stream (see `row_stream`)
    stop_token_ids: frozenset[int]
    stop_strings: tuple[str, ...]
    scoring: PromptScoring | None = None
    topk: int = 0  # K most likely tokens to report per sampled position (0: none)
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    topk_logprobs: list[list[tuple[int, float]]] = field(default_factory=list)
    model_logprobs: list[float] = field(default_factory=list)
    stop_reason: StopReason | None = None

    def finished(self) -> bool:
        return self.stop_reason is not None

    def result(self) -> SampledSequence:
        sequence = SampledSequence(tokens=self.tokens, logprobs=self.logprobs, stop_reason=self.stop_reason or "length")
        if self.topk:
            sequence.topk_logprobs, sequence.model_logprobs = self.topk_logprobs, self.model_logprobs
        return sequence


def row_stream(seed: int | None, sample_index: int) -> int:
    """Sample i of a seeded request draws from its own stream: reproducible, independent of batching."""
    if seed is None:
        return secrets.randbits(62)
    return (int(seed) * 1_000_003 + sample_index) % (2**63 - 1)


def _mul32(a: torch.Tensor, c: int) -> torch.Tensor:
    """(a * c) mod 2**32 for int64 `a` < 2**32, without overflowing int64."""
    return (a * (c & 0xFFFF) + (((a * (c >> 16)) & 0xFFFF) << 16)) & MASK32


def _mix32(h: torch.Tensor) -> torch.Tensor:
    """A 32-bit avalanche hash (lowbias32), elementwise on int64 tensors holding 32-bit values."""
    h = h ^ (h >> 16)
    h = _mul32(h, 0x7FEB352D)
    h = h ^ (h >> 15)
    h = _mul32(h, 0x846CA68B)
    return h ^ (h >> 16)


def stream_keys(streams: list[int], device: torch.device) -> torch.Tensor:
    """(B,) 32-bit keys of the rows' 63-bit streams, on the device."""
    s = torch.tensor(streams, dtype=torch.long, device=device)
    return _mix32((s & MASK32) ^ _mix32((s >> 32) & MASK32))


def uniforms(keys: torch.Tensor, step: int) -> torch.Tensor:
    """(B,) uniforms in [0, 1) for this step: a pure function of (key, step)."""
    h = _mix32(keys ^ _mix32(torch.full_like(keys, (step * 0x9E3779B9 + 1) & MASK32)))
    return (h >> 8).to(torch.float32) / float(1 << 24)


def next_tokens(
    logits: torch.Tensor, params: list[SamplingParams], uniform: torch.Tensor
) -> tuple[list[int], list[float]]:
    """Pick one token per row from (B, V) float32 logits; returns tokens and their logprobs.

    Inverse-CDF sampling with one uniform per row. The reported logprob is under the
    temperature-scaled distribution before top-k/top-p truncation (temperature 0 reports the plain
    distribution), so at temperature 1 it equals `forward`."""
    device = logits.device
    temperature = torch.tensor([p.temperature for p in params], device=device)
    greedy = temperature == 0
    logprobs = torch.log_softmax(logits / torch.where(greedy, 1.0, temperature)[:, None], dim=-1)  # (B, V)
    filtered = _truncate(logprobs, [p.top_k for p in params], [p.top_p for p in params])
    cdf = torch.cumsum(torch.softmax(filtered, dim=-1), dim=-1)  # (B, V)
    drawn = torch.searchsorted(cdf, (uniform * cdf[:, -1])[:, None]).squeeze(1).clamp(max=logits.shape[-1] - 1)
    tokens = torch.where(greedy, logits.argmax(dim=-1), drawn)
    chosen = logprobs.gather(1, tokens[:, None]).squeeze(1)
    both = torch.stack([tokens.to(chosen.dtype), chosen]).cpu()  # one device-to-host copy per step
    return both[0].long().tolist(), both[1].tolist()


def sampled_topk(
    logits: torch.Tensor, tokens: list[int], ks: list[int]
) -> list[tuple[list[tuple[int, float]], float] | None]:
    """Per row with k > 0: its k most likely tokens (most likely first) and the sampled token's
    logprob, all under the model's own distribution, log_softmax of the (B, V) logits before
    temperature and truncation (OpenAI's `top_logprobs`); None for rows with k = 0. Only the rows
    that ask are computed, with one device-to-host copy."""
    wanted = [i for i, k in enumerate(ks) if k > 0]
    answers: list[tuple[list[tuple[int, float]], float] | None] = [None] * len(ks)
    if not wanted:
        return answers
    index = torch.tensor(wanted, device=logits.device)
    logprobs = torch.log_softmax(logits.index_select(0, index).float(), dim=-1)  # (w, V)
    k_max = min(max(ks), logprobs.shape[-1])
    top = torch.topk(logprobs, k_max, dim=-1)
    chosen = logprobs.gather(1, torch.tensor([tokens[i] for i in wanted], device=logits.device)[:, None])
    # token ids travel as float64 (exact) beside the values, in one copy
    packed = torch.cat([top.values.double(), chosen.double(), top.indices.double()], dim=1).cpu()
    for j, i in enumerate(wanted):
        k = min(ks[i], k_max)
        ids = packed[j, k_max + 1 : k_max + 1 + k].long().tolist()
        answers[i] = (list(zip(ids, packed[j, :k].tolist())), float(packed[j, k_max]))
    return answers


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


def row_segments(rows: list[SampleRow], tokens_per_row: int) -> list[Segment]:
    """Token segments of rows grouped by adapter, each row holding `tokens_per_row` tokens."""
    segments: list[Segment] = []
    for i, row in enumerate(rows):
        if segments and segments[-1].adapter is row.adapter:
            segments[-1].stop = (i + 1) * tokens_per_row
        else:
            segments.append(Segment(row.adapter, i * tokens_per_row, (i + 1) * tokens_per_row))
    return segments


@dataclass
class Decoder:
    """The model split as generation needs it: the decoder body, the head, and the shared routing."""

    body: torch.nn.Module
    head: Head
    routing: Routing
    chunk_tokens: int


def generate(
    decoder: Decoder, rows: list[SampleRow], decode: Callable[[list[int]], str], pad_id: int, device: torch.device
) -> None:
    """Fill each row's tokens/logprobs/stop_reason (its top-k per position and its prompt scores
    when asked) in place. Rows must be grouped by adapter."""
    width = max(len(r.prompt) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, width - len(row.prompt) :] = torch.tensor(row.prompt)
        mask[i, width - len(row.prompt) :] = 1
    input_ids, mask = input_ids.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache()
    routing = decoder.routing
    with torch.no_grad():
        routing.segments = row_segments(rows, width)
        hidden = decoder.body(
            input_ids=input_ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True
        ).last_hidden_state  # (B, W, H)
        _score_prompts(decoder, rows, hidden, width, device)
        active = list(range(len(rows)))
        keys = stream_keys([r.stream for r in rows], device)
        last = hidden[:, -1]  # (B, H)
        step = 0
        while True:
            live = [rows[i] for i in active]
            logits = decoder.head.logits(last, row_segments(live, 1))  # (b, V)
            tokens, logprobs = next_tokens(logits, [r.params for r in live], uniforms(keys, step))
            tops = sampled_topk(logits, tokens, [r.topk for r in live])
            for row, token, logprob, top in zip(live, tokens, logprobs, tops):
                row.tokens.append(token)
                row.logprobs.append(logprob)
                if top is not None:
                    row.topk_logprobs.append(top[0])
                    row.model_logprobs.append(top[1])
                _update_stop(row, decode)
            keep = [j for j, row in enumerate(live) if not row.finished()]
            if not keep:
                break
            chosen = torch.tensor(tokens, device=device)
            if len(keep) < len(live):  # finished rows leave the batch, cache rows included
                index = torch.tensor(keep, device=device)
                cache.batch_select_indices(index)
                mask, positions, keys, chosen = mask[index], positions[index], keys[index], chosen[index]
                active = [active[j] for j in keep]
            mask = torch.cat([mask, torch.ones((len(active), 1), dtype=mask.dtype, device=device)], dim=1)
            positions = positions[:, -1:] + 1
            routing.segments = row_segments([rows[i] for i in active], 1)
            last = decoder.body(
                input_ids=chosen[:, None], attention_mask=mask, position_ids=positions, cache=cache, use_cache=True
            ).last_hidden_state[:, -1]  # (b, H)
            step += 1


def _score_prompts(decoder: Decoder, rows: list[SampleRow], hidden: torch.Tensor, width: int, device) -> None:
    """Prompt logprobs from the prefill's own hidden states: position t predicts prompt token t+1."""
    for i, row in enumerate(rows):
        scoring = row.scoring
        if scoring is None:
            continue
        n = len(row.prompt)
        h = hidden[i, width - n : width - 1]  # (n-1, H)
        segments = [Segment(row.adapter, 0, n - 1)] if n > 1 else None
        if scoring.logprobs:
            targets = torch.tensor(row.prompt[1:], device=device)[:, None]  # (n-1, 1)
            scored = target_logprobs(decoder.head, h, targets, segments, decoder.chunk_tokens)[:, 0] if n > 1 else None
            scoring.prompt_logprobs = scored.cpu().tolist() if scored is not None else []
        if scoring.topk:
            if n > 1:
                values, tokens = topk_logprobs(decoder.head, h, scoring.topk, segments, decoder.chunk_tokens)
                scoring.topk_prompt_logprobs = [
                    list(zip(t.tolist(), v.tolist())) for t, v in zip(tokens.cpu(), values.cpu())
                ]
            else:
                scoring.topk_prompt_logprobs = []
        if scoring.targets is not None:
            if n > 1:
                asked = torch.tensor(scoring.targets, dtype=torch.long, device=device)  # (n-1, K)
                scores = target_logprobs(decoder.head, h, asked.clamp(min=0), segments, decoder.chunk_tokens)
                scoring.target_prompt_logprobs = torch.where(asked >= 0, scores, 0.0).cpu().tolist()
            else:
                scoring.target_prompt_logprobs = []


def _update_stop(row: SampleRow, decode: Callable[[list[int]], str]) -> None:
    if row.tokens[-1] in row.stop_token_ids or row.stop_strings and _tail_has_stop(row, decode):
        row.stop_reason = "stop"
    elif len(row.tokens) >= row.params.max_tokens:
        row.stop_reason = "length"


def _tail_has_stop(row: SampleRow, decode: Callable[[list[int]], str]) -> bool:
    """A new match ends in the last token's text. A stop string of L characters is at most 4L bytes
    and every token at least one byte, so it lies within the last 4L + 1 tokens."""
    window = 4 * max(len(s) for s in row.stop_strings) + 1
    tail = decode(row.tokens[-window:])
    return any(s in tail for s in row.stop_strings)
