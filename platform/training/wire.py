"""Conversions between the JSON wire form (TINKER_WIRE.md) and the engine's types.

Parsing checks the wire shape (types, dtypes, sizes) and names the field on failure; the engine's
own validators then check the semantics (vocab, context, loss inputs) with the same messages the
runner would give.
"""

from __future__ import annotations

import math
import re
from typing import Any, NamedTuple

import numpy as np
import torch
from django.conf import settings

from gpu_runner.types import AdamParams, Datum, ForwardBackwardOutput, SampledSequence, SampleOutput, SamplingParams

from .errors import BadRequest, TooLarge
from .models import Checkpoint

DTYPES = {"int64": torch.int64, "float32": torch.float32}
DTYPE_RANGES = {"int64": (-(2**63), 2**63 - 1), "float32": (-3.4028234663852886e38, 3.4028234663852886e38)}
SEGMENT_CHOICES = "|".join(Checkpoint.SEGMENTS.values())
TINKER_PATH = re.compile(rf"tinker://(?P<run>[^/]+)/(?P<segment>{SEGMENT_CHOICES})/(?P<name>[^/]+)")
CHECKPOINT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # fullmatch: no trailing newline slips by


class TinkerPath(NamedTuple):
    run_id: str
    checkpoint_type: str
    name: str
    checkpoint_id: str  # `<segment>/<name>`, as in the REST routes


def require(body: dict, key: str, kind: type | tuple, where: str = "") -> Any:
    field = f"{where}{key}"
    if not isinstance(body, dict) or key not in body or body[key] is None:
        raise BadRequest(f"{field} is required", field=field)
    value = body[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind in (int, (int, float))):
        raise BadRequest(f"{field} must be of type {getattr(kind, '__name__', kind)}", field=field)
    return value


def optional(body: dict, key: str, kind: type | tuple, default: Any = None, where: str = "") -> Any:
    if key not in body or body[key] is None:
        return default
    return require(body, key, kind, where)


def user_metadata(body: dict) -> dict[str, str]:
    """Tinker's `user_metadata` is string to string: its SDK refuses any other value when it reads a
    run or checkpoint back, so one odd value would break every listing of the user's runs."""
    metadata = optional(body, "user_metadata", dict, {}) or {}
    for key, value in metadata.items():
        if not isinstance(value, str):
            raise BadRequest(
                f"user_metadata.{key} must be a string (got {type(value).__name__}); send str(value)",
                field=f"user_metadata.{key}",
            )
    return metadata


# The types a decoded body's numbers have (JSON and protobuf make plain ints and floats; a bool is
# no number here). Checked as `set(map(type, values)) <= ...`: one C pass over a long list.
INTEGER = frozenset({int})
NUMBER = frozenset({int, float})


def model_input_tokens(value: Any, field: str) -> list[int]:
    if not isinstance(value, dict) or not isinstance(value.get("chunks"), list):
        raise BadRequest(f"{field} must be {{'chunks': [...]}}", field=field)
    tokens: list[int] = []
    for i, chunk in enumerate(value["chunks"]):
        where = f"{field}.chunks[{i}]"
        if not isinstance(chunk, dict) or chunk.get("type", "encoded_text") != "encoded_text":
            raise BadRequest(f"{where}: only encoded_text chunks are supported", field=where)
        ids = chunk.get("tokens")
        if not isinstance(ids, list) or not set(map(type, ids)) <= INTEGER:  # a C pass: bodies are long
            raise BadRequest(f"{where}.tokens must be a list of integers", field=f"{where}.tokens")
        tokens.extend(ids)
    return tokens


def tensor_data(value: Any, field: str, pad: int | float = 0) -> torch.Tensor:
    """TensorData JSON, dense or sparse CSR (`sparse_crow_indices`/`sparse_col_indices`, unlisted
    cells `pad`), as a dense tensor."""
    if not isinstance(value, dict) or "data" not in value:
        raise BadRequest(f"{field} must be TensorData {{data, dtype, shape}}", field=field)
    dtype = value.get("dtype")
    if dtype not in DTYPES:
        raise BadRequest(f"{field}.dtype must be one of {sorted(DTYPES)}, got {dtype!r}", field=f"{field}.dtype")
    data = _numbers(value["data"], f"{field}.data")
    if data and not all(low <= x <= high for low, high in (DTYPE_RANGES[dtype],) for x in (min(data), max(data))):
        low, high = DTYPE_RANGES[dtype]
        raise BadRequest(f"{field}.data holds values outside {dtype}'s range [{low}, {high}]", field=f"{field}.data")
    if dtype == "int64" and not set(map(type, data)) <= INTEGER and not all(float(x).is_integer() for x in data):
        raise BadRequest(f"{field}.data must hold integers for dtype int64", field=f"{field}.data")
    sparse = value.get("sparse_crow_indices") is not None or value.get("sparse_col_indices") is not None
    shape = value.get("shape") or ([] if sparse else [len(data)])
    if not isinstance(shape, list) or not all(isinstance(s, int) and s >= 0 for s in shape) or len(shape) > 2:
        raise BadRequest(f"{field}.shape must be a list of at most 2 non-negative integers", field=f"{field}.shape")
    numpy_dtype = "<i8" if dtype == "int64" else "<f4"
    if sparse:
        crow = _numbers(value.get("sparse_crow_indices"), f"{field}.sparse_crow_indices")
        cols = _numbers(value.get("sparse_col_indices"), f"{field}.sparse_col_indices")
        dense = densify_csr(
            np.asarray(data, numpy_dtype), np.asarray(crow, "<i8"), np.asarray(cols, "<i8"), shape, pad, field
        )
        return torch.from_numpy(dense.copy()).reshape(shape)
    if math.prod(shape) != len(data):
        raise BadRequest(f"{field}.shape {shape} does not match {len(data)} values", field=f"{field}.shape")
    return torch.tensor(data, dtype=DTYPES[dtype]).reshape(shape)


def _numbers(value: Any, field: str) -> list:
    if not isinstance(value, list) or not set(map(type, value)) <= NUMBER:
        raise BadRequest(f"{field} must be a flat list of numbers", field=field)
    return value


def densify_csr(
    values: np.ndarray,
    crow: np.ndarray,
    cols: np.ndarray,
    shape: list[int],
    pad: int | float,
    where: str,
    index_names: tuple[str, str] = ("sparse_crow_indices", "sparse_col_indices"),
) -> np.ndarray:
    """A CSR matrix (either encoding's; `index_names` are its fields' names) as its dense row-major
    values, unlisted cells `pad`; the dense size is bounded by the request body limit."""
    crow_field, col_field = (f"{where}.{name}" for name in index_names)
    if len(shape) != 2 or min(shape) < 0:
        raise BadRequest(f"{where} is sparse, so it needs a 2-D shape [rows, columns], got {shape}", field=where)
    if math.prod(shape) * values.dtype.itemsize > settings.LORASMITH.max_body_bytes:
        raise TooLarge(f"{where}: dense shape {shape} exceeds the request body limit", field=where)
    rows, columns = shape
    if len(crow) != rows + 1 or crow[0] != 0 or np.any(np.diff(crow) < 0):
        raise BadRequest(f"{crow_field} must be {rows + 1} non-decreasing offsets from 0", field=crow_field)
    if not int(crow[-1]) == len(cols) == len(values):
        raise BadRequest(
            f"{where}: {crow_field} ends at {int(crow[-1])} but there are {len(cols)} column indices and "
            f"{len(values)} values",
            field=where,
        )
    if len(cols) and (cols.min() < 0 or cols.max() >= columns):
        raise BadRequest(f"{col_field} must lie in [0, {columns})", field=col_field)
    dense = np.full(rows * columns, pad, dtype=values.dtype)
    row_of = np.repeat(np.arange(rows, dtype=np.int64), np.diff(crow))
    dense[row_of * columns + cols] = values
    return dense


def datum(value: Any, index: int) -> Datum:
    where = f"data[{index}]"
    if not isinstance(value, dict):
        raise BadRequest(f"{where} must be an object", field=where)
    tokens = model_input_tokens(value.get("model_input"), f"{where}.model_input")
    inputs = value.get("loss_fn_inputs") or {}
    if not isinstance(inputs, dict):
        raise BadRequest(f"{where}.loss_fn_inputs must be an object", field=f"{where}.loss_fn_inputs")
    return Datum(tokens, {k: tensor_data(v, f"{where}.loss_fn_inputs.{k}") for k, v in inputs.items()})


def loss_config(body: dict) -> dict[str, float] | None:
    config = dict(optional(body, "loss_fn_config", dict, {}) or {})
    for key, value in (optional(body, "loss_fn_config_v2", dict, {}) or {}).items():
        number = value.get("number") if isinstance(value, dict) else value
        if isinstance(number, (int, float)) and not isinstance(number, bool):
            config[key] = float(number)
    return config or None


def adam_params(body: dict) -> AdamParams:
    raw = optional(body, "adam_params", dict, {})
    defaults = AdamParams()
    values = {}
    for name in ("learning_rate", "beta1", "beta2", "eps", "weight_decay", "grad_clip_norm"):
        value = raw.get(name, getattr(defaults, name))
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise BadRequest(f"adam_params.{name} must be a finite number", field=f"adam_params.{name}")
        values[name] = float(value)
    if values["learning_rate"] < 0 or not 0 <= values["beta1"] < 1 or not 0 <= values["beta2"] < 1:
        raise BadRequest("adam_params: learning_rate must be >= 0 and betas in [0, 1)", field="adam_params")
    if values["weight_decay"] < 0 or values["grad_clip_norm"] < 0 or values["eps"] < 0:
        raise BadRequest("adam_params: eps, weight_decay and grad_clip_norm must be >= 0", field="adam_params")
    return AdamParams(**values)


def sampling_params(value: Any) -> SamplingParams:
    if not isinstance(value, dict):
        raise BadRequest("sampling_params must be an object", field="sampling_params")
    stop = value.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None and (
        not isinstance(stop, list)
        or not (
            all(isinstance(s, str) for s in stop) or all(isinstance(s, int) and not isinstance(s, bool) for s in stop)
        )
    ):
        raise BadRequest(
            "sampling_params.stop must be a string, a list of strings or a list of token ids",
            field="sampling_params.stop",
        )

    def number(name: str, default: float) -> float:
        raw = value.get(name)
        if raw is None:
            return default
        if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not math.isfinite(raw):
            raise BadRequest(f"sampling_params.{name} must be a finite number", field=f"sampling_params.{name}")
        return float(raw)

    def integer(name: str) -> int | None:
        raw = value.get(name)
        if raw is not None and (isinstance(raw, bool) or not isinstance(raw, int)):
            raise BadRequest(f"sampling_params.{name} must be an integer", field=f"sampling_params.{name}")
        return raw

    max_tokens, top_k = integer("max_tokens"), integer("top_k")
    return SamplingParams(
        max_tokens=16 if max_tokens is None else max_tokens,
        temperature=number("temperature", 1.0),
        top_k=-1 if top_k is None else top_k,
        top_p=number("top_p", 1.0),
        stop=stop,
        seed=integer("seed"),
    )


def parse_tinker_path(path: Any, field: str = "path") -> TinkerPath:
    match = TINKER_PATH.fullmatch(path) if isinstance(path, str) else None
    if match is None:
        raise BadRequest(f"{field} must look like tinker://<model_id>/<{SEGMENT_CHOICES}>/<name>", field=field)
    segment, name = match["segment"], match["name"]
    return TinkerPath(match["run"], Checkpoint.TYPE_OF_SEGMENT[segment], name, f"{segment}/{name}")


def checkpoint_name(body: dict, key: str = "path") -> str:
    name = require(body, key, str)
    if not CHECKPOINT_NAME.fullmatch(name):
        raise BadRequest(f"{key} must be 1-128 characters of letters, digits, '.', '_' or '-'", field=key)
    return name


def tensor_json(tensor: torch.Tensor) -> dict:
    dtype = "int64" if not tensor.dtype.is_floating_point else "float32"
    return {"data": tensor.flatten().tolist(), "dtype": dtype, "shape": list(tensor.shape)}


def forward_backward_json(output: ForwardBackwardOutput) -> dict:
    return {
        "loss_fn_output_type": "ArrayRecord",
        "loss_fn_outputs": [{k: tensor_json(v) for k, v in per.items()} for per in output.loss_fn_outputs],
        "metrics": output.metrics,
    }


def _sequence_json(sequence: SampledSequence) -> dict:
    """`topk_logprobs` ([[token, logprob], …] per position) and `model_logprobs` only when the
    request asked for topk_sample_logprobs: an ordinary sequence's JSON is unchanged."""
    out = {"tokens": sequence.tokens, "logprobs": sequence.logprobs, "stop_reason": sequence.stop_reason}
    if sequence.topk_logprobs is not None:
        out["topk_logprobs"] = [[[t, lp] for t, lp in row] for row in sequence.topk_logprobs]
        out["model_logprobs"] = sequence.model_logprobs
    return out


def sample_json(output: SampleOutput, prompt_logprobs_last_n: int | None = None) -> dict:
    """With `prompt_logprobs_last_n`, prompt positions before the last N carry None (TINKER_WIRE §8.8)."""
    prompt_lp, topk = output.prompt_logprobs, output.topk_prompt_logprobs
    if prompt_logprobs_last_n is not None:

        def last_n(values: list | None) -> list | None:
            if values is None:
                return None
            cut = max(len(values) - prompt_logprobs_last_n, 0)
            return [None] * cut + values[cut:]

        prompt_lp, topk = last_n(prompt_lp), last_n(topk)
    return {
        "sequences": [_sequence_json(s) for s in output.sequences],
        "prompt_logprobs": prompt_lp,
        "topk_prompt_logprobs": None
        if topk is None
        else [None if row is None else [[t, lp] for t, lp in row] for row in topk],
        "prompt_cache_hit_tokens": 0,
        **(
            {"target_prompt_logprobs": tensor_json(torch.tensor(output.target_prompt_logprobs, dtype=torch.float32))}
            if output.target_prompt_logprobs is not None
            else {}
        ),
    }
