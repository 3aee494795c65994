"""The protobuf answers of `retrieve_future` (TINKER_WIRE.md §8.6, §8.8): a finished forward /
forward_backward or sample result, stored as JSON, encoded as Tinker's SDK reads it. Everything
else the future can answer (pending, failed, other results) stays JSON for every client.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from .tinker_proto import CONTENT_TYPE, DTYPE, STOP_REASON, ForwardBackwardOutput, SampleResponse

NUMPY = {"float32": "<f4", "int64": "<i8"}
TOPK_EMPTY = (0, -99999.0)  # the SDK's filler for a position with fewer than k entries


def wants_protobuf(accept: str) -> bool:
    return CONTENT_TYPE in accept


def encode(result: dict) -> bytes | None:
    """The protobuf bytes of a stored result, or None when its type travels only as JSON."""
    if result.get("type") == "forward_backward":
        return forward_backward_output(result).SerializeToString()
    if result.get("type") == "sample":
        return sample_response(result).SerializeToString()
    return None


def forward_backward_output(result: dict):
    """One ArrayRecord per run of consecutive datums whose outputs agree in names, dtypes and
    trailing shapes (the SDK concatenates records in order)."""
    message = ForwardBackwardOutput(loss_fn_output_type=result.get("loss_fn_output_type") or "ArrayRecord")
    for key, value in result["metrics"].items():
        message.metrics[key] = value
    for _, group in itertools.groupby(result["loss_fn_outputs"], key=_layout):
        datums = list(group)
        record = message.loss_fn_outputs.add(type_tag="ArrayRecord", num_datums=len(datums))
        for name, first in datums[0].items():
            arrays = [np.asarray(datum[name]["data"], dtype=NUMPY[first["dtype"]]) for datum in datums]
            batched = record.fields[name]
            batched.dtype = DTYPE[f"DTYPE_{first['dtype'].upper()}"]
            batched.trailing_shape.extend(first["shape"][1:])
            batched.data = b"".join(a.tobytes() for a in arrays)
            batched.offsets = np.cumsum([0] + [a.nbytes for a in arrays], dtype="<i8").tobytes()
    return message


def _layout(outputs: dict) -> tuple:
    return tuple((name, t["dtype"], tuple(t["shape"][1:])) for name, t in outputs.items())


def _fill_topk(field, topk: list) -> None:
    """A TopkLogprobs message: row-major [length, k]; short rows padded with the SDK's empty cell."""
    k = max((len(row) for row in topk if row), default=0)
    cells = [list(row or []) + [TOPK_EMPTY] * (k - len(row or [])) for row in topk]
    field.k = k
    field.length = len(topk)
    field.token_ids = np.asarray([t for row in cells for t, _ in row], "<i4").tobytes()
    field.logprobs = np.asarray([lp for row in cells for _, lp in row], "<f4").tobytes()


def sample_response(result: dict):
    message = SampleResponse(prompt_cache_hit_tokens=result.get("prompt_cache_hit_tokens") or 0)
    for sequence in result["sequences"]:
        added = message.sequences.add(
            stop_reason=STOP_REASON[sequence["stop_reason"]],
            tokens=np.asarray(sequence["tokens"], dtype="<i4").tobytes(),
        )
        if sequence.get("logprobs") is not None:
            added.logprobs = np.asarray(sequence["logprobs"], dtype="<f4").tobytes()
        if sequence.get("topk_logprobs") is not None:  # asked with topk_sample_logprobs
            _fill_topk(added.topk_sampled_logprobs, sequence["topk_logprobs"])
    prompt_logprobs = result.get("prompt_logprobs")
    if prompt_logprobs is not None:  # NaN where a position was not scored
        message.prompt_logprobs = np.asarray(
            [math.nan if lp is None else lp for lp in prompt_logprobs], dtype="<f4"
        ).tobytes()
    topk = result.get("topk_prompt_logprobs")
    if topk is not None:
        _fill_topk(message.topk_prompt_logprobs, topk)
    target = result.get("target_prompt_logprobs")
    if target is not None:  # dense float32, the request's shape
        message.target_prompt_logprobs.dtype = DTYPE["DTYPE_FLOAT32"]
        message.target_prompt_logprobs.shape.extend(target["shape"])
        message.target_prompt_logprobs.dense = np.asarray(target["data"], dtype="<f4").tobytes()
    return message
