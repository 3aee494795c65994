"""What one request may cost, decided at the door before any of it is materialised.

A body's size says little about what it decodes to: a sparse CSR tensor of shape [1, 16 M] with no
values is a few bytes on the wire and 16 M numbers once densified, and a request may carry many of
them. So the decoded size of a whole request is summed over every datum and tensor from the shapes
and lengths the body declares (before any tensor is built) and bounded by the body limit
(`LORASMITH_MAX_BODY_BYTES`, counting each cell at its wire size: 4 bytes for float32 and token ids,
8 for int64, as a dense protobuf body would carry it). What a request asks the engine to compute is
bounded too: training tokens summed over its datums (`LORASMITH_MAX_REQUEST_TOKENS`), and for a
sample, samples x (prompt + max_tokens) (`LORASMITH_MAX_SAMPLE_TOKENS`), and the top-k logprob cells its
result would carry (`LORASMITH_MAX_TOPK_CELLS`): a few bytes of request can ask for tens of MB of result.
"""

from __future__ import annotations

import math
from typing import Any

from django.conf import settings

from ..errors import TooLarge

CELL_BYTES = {"float32": 4, "int64": 8, "int32": 4, "bfloat16": 2}
TOKEN_BYTES = 4  # int32 on Tinker's protobuf wire


def check_training(decoded_bytes: int, tokens: int) -> None:
    """Refuse (413 naming the limit) a training request that decodes past the body limit or
    asks for more tokens than one request may carry."""
    limit = settings.LORASMITH.max_body_bytes
    if decoded_bytes > limit:
        raise TooLarge(
            f"the request decodes to {decoded_bytes} bytes of tokens and tensor cells (sparse tensors counted "
            f"at their dense shape), over the limit of {limit} bytes (LORASMITH_MAX_BODY_BYTES)",
            field="data",
        )
    budget = settings.LORASMITH.max_request_tokens
    if budget and tokens > budget:
        raise TooLarge(
            f"the request holds {tokens} tokens over its datums, over the budget of {budget} tokens per "
            "request (LORASMITH_MAX_REQUEST_TOKENS); split the batch into several forward_backward calls",
            field="data",
        )


def check_sample(prompt_tokens: int, num_samples: int, max_tokens: int) -> None:
    """Refuse a sample that asks for more than samples x (prompt + max_tokens) tokens allow."""
    budget = settings.LORASMITH.max_sample_tokens
    cost = num_samples * (prompt_tokens + max_tokens)
    if budget and cost > budget:
        raise TooLarge(
            f"num_samples ({num_samples}) x (prompt {prompt_tokens} + max_tokens {max_tokens} tokens) = {cost} "
            f"tokens, over the budget of {budget} per sample request (LORASMITH_MAX_SAMPLE_TOKENS); ask for "
            "fewer samples per request",
            field="num_samples",
        )


def check_topk(prompt_tokens: int, topk_prompt: int, num_samples: int, max_tokens: int, topk_sampled: int) -> None:
    """Refuse a sample whose result would carry more top-k (token, logprob) cells than allowed."""
    budget = settings.LORASMITH.max_topk_cells
    cells = prompt_tokens * topk_prompt + num_samples * max_tokens * topk_sampled
    if budget and cells > budget:
        field = "topk_sample_logprobs" if topk_sampled else "topk_prompt_logprobs"
        raise TooLarge(
            f"prompt {prompt_tokens} x topk_prompt_logprobs {topk_prompt} + num_samples {num_samples} x max_tokens "
            f"{max_tokens} x topk_sample_logprobs {topk_sampled} = {cells} top-k cells, over the budget of {budget} "
            "per sample request (LORASMITH_MAX_TOPK_CELLS); ask for a smaller k or fewer tokens",
            field=field,
        )


def json_training_cost(data: Any) -> tuple[int, int]:
    """(decoded bytes, tokens) a JSON forward_backward `data` list declares, read from lengths and
    shapes only. Malformed parts count as nothing here: the parse after this refuses them."""
    decoded = tokens = 0
    for datum in data if isinstance(data, list) else ():
        if not isinstance(datum, dict):
            continue
        model_input = datum.get("model_input")
        chunks = model_input.get("chunks") if isinstance(model_input, dict) else None
        for chunk in chunks if isinstance(chunks, list) else ():
            ids = chunk.get("tokens") if isinstance(chunk, dict) else None
            tokens += len(ids) if isinstance(ids, list) else 0
        inputs = datum.get("loss_fn_inputs")
        for tensor in inputs.values() if isinstance(inputs, dict) else ():
            decoded += _json_tensor_bytes(tensor)
    return decoded + tokens * TOKEN_BYTES, tokens


def _json_tensor_bytes(tensor: Any) -> int:
    if not isinstance(tensor, dict):
        return 0
    itemsize = CELL_BYTES.get(tensor.get("dtype"), 8)  # type: ignore[arg-type]
    sparse = tensor.get("sparse_crow_indices") is not None or tensor.get("sparse_col_indices") is not None
    shape = tensor.get("shape")
    if sparse and isinstance(shape, list) and all(isinstance(s, int) and not isinstance(s, bool) for s in shape):
        return dense_bytes(shape, itemsize)
    data = tensor.get("data")
    return len(data) * itemsize if isinstance(data, list) else 0


def dense_bytes(shape: list[int], itemsize: int) -> int:
    """The bytes a tensor of `shape` holds once dense (negative sizes count as 0: refused later)."""
    return math.prod(max(s, 0) for s in shape) * itemsize
