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


def completion_logprobs(seq: Visible) -> dict:
    offsets, at = [], 0
    for piece in seq.pieces:
        offsets.append(at)
        at += len(piece)
    return {"tokens": seq.pieces, "token_logprobs": seq.logprobs, "top_logprobs": None, "text_offset": offsets}


def chat_logprobs(seq: Visible) -> dict:
    return {
        "content": [
            {"token": piece, "logprob": logprob, "bytes": list(piece.encode()), "top_logprobs": []}
            for piece, logprob in zip(seq.pieces, seq.logprobs, strict=True)
        ],
        "refusal": None,
    }


def completion(meta: dict, sequences: list[Visible], logprobs: bool, used: dict) -> dict:
    choices = [
        {
            "index": index,
            "text": seq.text,
            "logprobs": completion_logprobs(seq) if logprobs else None,
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
