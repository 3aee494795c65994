"""OpenAI's JSON objects: `text_completion`, `chat.completion`, their streamed chunks, `usage`,
and the model list. Pure functions of what was sampled."""

from __future__ import annotations

from .text import Visible


def usage(prompt_tokens: int, sampled_tokens: int) -> dict:
    """completion_tokens counts every token generated (as Usage does), end-of-sequence included."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": sampled_tokens,
        "total_tokens": prompt_tokens + sampled_tokens,
    }


def completion_logprobs(seq: Visible, with_top: bool, start: int = 0, stop: int | None = None) -> dict:
    """Tokens `start:stop` of `seq` (a streamed chunk holds one); `top_logprobs` per token is a
    {text: logprob} dict of its alternatives (a text two alternatives share keeps the likelier),
    None when none were asked (`logprobs: 0`)."""
    span = slice(start, stop)
    offsets, at = [], sum(len(piece) for piece in seq.pieces[:start])
    for piece in seq.pieces[span]:
        offsets.append(at)
        at += len(piece)
    top = [_first_of_each(row) for row in seq.top[span]] if with_top else None
    return {
        "tokens": seq.pieces[span],
        "token_logprobs": seq.logprobs[span],
        "top_logprobs": top,
        "text_offset": offsets,
    }


def _first_of_each(row: list[tuple[str, float]]) -> dict[str, float]:
    ranked: dict[str, float] = {}
    for text, logprob in row:
        ranked.setdefault(text, logprob)
    return ranked


def chat_logprobs(seq: Visible, start: int = 0, stop: int | None = None) -> dict:
    """Tokens `start:stop` of `seq`, each {token, logprob, bytes, top_logprobs: [{token, logprob,
    bytes}, …] most likely first}."""
    span = slice(start, stop)
    return {
        "content": [
            {**_token_entry(piece, logprob), "top_logprobs": [_token_entry(text, lp) for text, lp in top]}
            for piece, logprob, top in zip(seq.pieces[span], seq.logprobs[span], seq.top[span], strict=True)
        ],
        "refusal": None,
    }


def _token_entry(text: str, logprob: float) -> dict:
    return {"token": text, "logprob": logprob, "bytes": list(text.encode())}


def completion(meta: dict, sequences: list[Visible], logprobs: bool, used: dict, with_top: bool = False) -> dict:
    choices = [
        {
            "index": index,
            "text": seq.text,
            "logprobs": completion_logprobs(seq, with_top) if logprobs else None,
            "finish_reason": seq.finish_reason,
        }
        for index, seq in enumerate(sequences)
    ]
    return {**meta, "object": "text_completion", "choices": choices, "usage": used}


def chat_completion(meta: dict, sequences: list[Visible], logprobs: bool, used: dict) -> dict:
    choices = [
        {
            "index": index,
            "message": {"role": "assistant", "content": seq.text, "refusal": None},
            "logprobs": chat_logprobs(seq) if logprobs else None,
            "finish_reason": seq.finish_reason,
        }
        for index, seq in enumerate(sequences)
    ]
    return {**meta, "object": "chat.completion", "choices": choices, "usage": used}


# ---- streamed chunks (each one `data: <json>`) ------------------------------------------------


def chat_chunk(meta: dict, choices: list[dict], used: dict | None = None) -> dict:
    chunk = {**meta, "object": "chat.completion.chunk", "choices": choices}
    if used is not None:
        chunk["usage"] = used
    return chunk


def chat_delta(index: int, delta: dict, finish_reason: str | None = None, logprobs: dict | None = None) -> dict:
    return {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}


def completion_chunk(meta: dict, choices: list[dict], used: dict | None = None) -> dict:
    chunk = {**meta, "object": "text_completion", "choices": choices}
    if used is not None:
        chunk["usage"] = used
    return chunk


def completion_delta(index: int, text: str, finish_reason: str | None = None, logprobs: dict | None = None) -> dict:
    return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}


# ---- models -----------------------------------------------------------------------------------


def model_entry(model_id: str, created: int, owned_by: str, parent: str | None) -> dict:
    return {
        "id": model_id,
        "object": "model",
        "created": created,
        "owned_by": owned_by,
        "parent": parent,
        "root": parent or model_id,
    }
