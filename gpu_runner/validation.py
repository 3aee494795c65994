"""Checks every request must pass before it touches the model: the platform calls these at the
door (so HTTP 400s and the engine agree), and the engine calls them again as a last defence.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .base_model import BaseModelInfo
from .errors import EngineInputError
from .losses import LOSSES, UNSUPPORTED
from .types import Datum, SamplingParams


def validate_tokens(tokens: Sequence[int], info: BaseModelInfo, field: str, datum: int | None = None) -> None:
    if len(tokens) == 0:
        raise EngineInputError(f"{field} is empty", field=field, datum=datum)
    if len(tokens) > info.max_context:
        raise EngineInputError(
            f"{field} has {len(tokens)} tokens, more than the model context of {info.max_context}",
            field=field,
            datum=datum,
        )
    try:
        ids = torch.as_tensor(tokens)
    except (TypeError, ValueError, RuntimeError):
        raise EngineInputError(f"{field} must be a list of integer token ids", field=field, datum=datum) from None
    if ids.dim() != 1 or ids.dtype not in (torch.int64, torch.int32):
        raise EngineInputError(f"{field} must be a flat list of integer token ids", field=field, datum=datum)
    bad = ((ids < 0) | (ids >= info.vocab_size)).nonzero()
    if len(bad):
        position = int(bad[0])
        raise EngineInputError(
            f"{field}[{position}] = {int(ids[position])} is outside the vocabulary [0, {info.vocab_size})",
            field=field,
            datum=datum,
        )


def validate_forward_backward(
    info: BaseModelInfo, data: Sequence[Datum], loss_fn: str, loss_fn_config: dict | None
) -> None:
    if loss_fn in UNSUPPORTED:
        raise EngineInputError(f"loss_fn {loss_fn!r} is not supported here: {UNSUPPORTED[loss_fn]}", field="loss_fn")
    spec = LOSSES.get(loss_fn)
    if spec is None:
        raise EngineInputError(f"unknown loss_fn {loss_fn!r}; expected one of {sorted(LOSSES)}", field="loss_fn")
    _validate_loss_config(loss_fn, loss_fn_config, spec)
    if not data:
        raise EngineInputError("data is empty: forward_backward needs at least one datum", field="data")
    for index, datum in enumerate(data):
        _validate_datum(info, datum, index, loss_fn, spec)


def _validate_loss_config(loss_fn: str, config: dict | None, spec) -> None:
    allowed = {name for name, _ in spec.config_defaults} | set(spec.required_config)
    for key, value in (config or {}).items():
        if key not in allowed:
            raise EngineInputError(
                f"loss_fn_config key {key!r} is not used by {loss_fn}; allowed: {sorted(allowed) or 'none'}",
                field=f"loss_fn_config.{key}",
            )
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise EngineInputError(f"loss_fn_config.{key} must be a number", field=f"loss_fn_config.{key}")
    for key in spec.required_config:
        if key not in (config or {}):
            raise EngineInputError(f"{loss_fn} needs loss_fn_config.{key}", field=f"loss_fn_config.{key}")


def _validate_datum(info: BaseModelInfo, datum: Datum, index: int, loss_fn: str, spec) -> None:
    validate_tokens(datum.model_input, info, "model_input", index)
    n = len(datum.model_input)
    inputs = datum.loss_fn_inputs
    for name in spec.required:
        if name not in inputs:
            raise EngineInputError(
                f"{loss_fn} needs loss_fn_inputs.{name}", field=f"loss_fn_inputs.{name}", datum=index
            )
    known = set(spec.required) | set(spec.optional)
    for name, tensor in inputs.items():
        field = f"loss_fn_inputs.{name}"
        if name not in known:
            raise EngineInputError(
                f"{field} is not an input of {loss_fn}; expected {sorted(known)}", field=field, datum=index
            )
        if not torch.is_tensor(tensor):
            raise EngineInputError(f"{field} must be a tensor", field=field, datum=index)
        max_dims = 2 if spec.allows_2d_targets else 1
        if tensor.dim() < 1 or tensor.dim() > max_dims:
            raise EngineInputError(
                f"{field} has shape {list(tensor.shape)}; expected ({n},)" + (f" or ({n}, K)" if max_dims == 2 else ""),
                field=field,
                datum=index,
            )
        if tensor.shape[0] != n:
            raise EngineInputError(
                f"{field} has {tensor.shape[0]} entries but model_input has {n} tokens", field=field, datum=index
            )
        if name == "target_tokens":
            if tensor.dtype.is_floating_point or tensor.dtype == torch.bool:
                raise EngineInputError(f"{field} must be int64, got {tensor.dtype}", field=field, datum=index)
            if tensor.numel() and (int(tensor.min()) < 0 or int(tensor.max()) >= info.vocab_size):
                raise EngineInputError(
                    f"{field} holds a token id outside the vocabulary [0, {info.vocab_size})", field=field, datum=index
                )
        else:
            if not tensor.dtype.is_floating_point:
                raise EngineInputError(f"{field} must be float32, got {tensor.dtype}", field=field, datum=index)
            if not bool(torch.isfinite(tensor).all()):
                raise EngineInputError(f"{field} holds NaN or infinite values", field=field, datum=index)
    targets = inputs["target_tokens"]
    for name, tensor in inputs.items():
        if name != "target_tokens" and tuple(tensor.shape) != tuple(targets.shape):
            raise EngineInputError(
                f"loss_fn_inputs.{name} has shape {list(tensor.shape)} but target_tokens has {list(targets.shape)}",
                field=f"loss_fn_inputs.{name}",
                datum=index,
            )


def validate_sample(
    info: BaseModelInfo,
    prompt: Sequence[int],
    num_samples: int,
    params: SamplingParams,
    topk_prompt_logprobs: int = 0,
    target_prompt_tokens: Sequence[Sequence[int]] | None = None,
    topk_sample_logprobs: int = 0,
) -> None:
    validate_tokens(prompt, info, "prompt")
    if not 1 <= num_samples <= 128:
        raise EngineInputError(f"num_samples must be between 1 and 128, got {num_samples}", field="num_samples")
    if params.max_tokens is None or params.max_tokens < 1:
        raise EngineInputError("sampling_params.max_tokens must be at least 1", field="sampling_params.max_tokens")
    if len(prompt) + params.max_tokens > info.max_context:
        raise EngineInputError(
            f"prompt ({len(prompt)} tokens) + max_tokens ({params.max_tokens}) exceeds the model context of "
            f"{info.max_context}",
            field="sampling_params.max_tokens",
        )
    if params.temperature < 0:
        raise EngineInputError("sampling_params.temperature must be >= 0", field="sampling_params.temperature")
    if not 0 < params.top_p <= 1:
        raise EngineInputError("sampling_params.top_p must be in (0, 1]", field="sampling_params.top_p")
    if params.top_k == 0 or params.top_k < -1:
        raise EngineInputError(
            "sampling_params.top_k must be -1 (off) or a positive integer", field="sampling_params.top_k"
        )
    if not 0 <= topk_prompt_logprobs <= 100:
        raise EngineInputError("topk_prompt_logprobs must be between 0 and 100", field="topk_prompt_logprobs")
    if not 0 <= topk_sample_logprobs <= 100:
        raise EngineInputError("topk_sample_logprobs must be between 0 and 100", field="topk_sample_logprobs")
    if target_prompt_tokens is not None:
        _validate_target_prompt_tokens(target_prompt_tokens, len(prompt), info)
    for stop in params.stop or []:
        if isinstance(stop, int) and not 0 <= stop < info.vocab_size:
            raise EngineInputError(f"stop token {stop} is outside the vocabulary", field="sampling_params.stop")
        if isinstance(stop, str) and not stop:
            raise EngineInputError("stop strings must not be empty", field="sampling_params.stop")


def _validate_target_prompt_tokens(rows: Sequence[Sequence[int]], prompt_length: int, info: BaseModelInfo) -> None:
    field = "target_prompt_logprobs"
    widths = {len(row) for row in rows}
    if len(rows) != prompt_length - 1 or len(widths) > 1 or not 1 <= next(iter(widths), 1) <= 100:
        raise EngineInputError(
            f"{field} must have shape [len(prompt) - 1, K] = [{prompt_length - 1}, K] with 1 <= K <= 100 "
            "(row i scores prompt position i + 1)",
            field=field,
        )
    for i, row in enumerate(rows):
        for token in row:
            if not (token == -1 or 0 <= token < info.vocab_size):
                raise EngineInputError(
                    f"{field}[{i}] holds {token}: a token id in [0, {info.vocab_size}) or -1 (none)", field=field
                )
