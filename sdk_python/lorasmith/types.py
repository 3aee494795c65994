"""Wire types with Tinker's names and defaults (DESIGN §3, TINKER_WIRE §8), as pydantic models."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

FLOAT_INPUTS = {"weights", "advantages", "logprobs", "clip_low_threshold", "clip_high_threshold"}
LossFnType = Literal["cross_entropy", "importance_sampling", "ppo", "cispo", "dro", "gspo"]
StopReason = Literal["stop", "length"]
TensorDtype = Literal["int64", "float32"]


class EncodedTextChunk(BaseModel):
    tokens: list[int]
    type: Literal["encoded_text"] = "encoded_text"

    @property
    def length(self) -> int:
        return len(self.tokens)


class ModelInput(BaseModel):
    chunks: list[EncodedTextChunk] = Field(default_factory=list)

    @classmethod
    def from_ints(cls, tokens: list[int]) -> ModelInput:
        return cls(chunks=[EncodedTextChunk(tokens=[int(t) for t in tokens])])

    @classmethod
    def empty(cls) -> ModelInput:
        return cls(chunks=[])

    def to_ints(self) -> list[int]:
        return [t for chunk in self.chunks for t in chunk.tokens]

    @property
    def length(self) -> int:
        return sum(chunk.length for chunk in self.chunks)

    def append_int(self, token: int) -> ModelInput:
        return ModelInput.from_ints(self.to_ints() + [int(token)])


class TensorData(BaseModel):
    data: list[int | float]
    dtype: TensorDtype
    shape: list[int] | None = None

    @classmethod
    def from_numpy(cls, array: np.ndarray) -> TensorData:
        dtype: TensorDtype = "int64" if np.issubdtype(array.dtype, np.integer) else "float32"
        return cls(data=array.astype(dtype).reshape(-1).tolist(), dtype=dtype, shape=list(array.shape))

    @classmethod
    def from_torch(cls, tensor) -> TensorData:
        return cls.from_numpy(tensor.detach().cpu().numpy())

    def to_numpy(self) -> np.ndarray:
        return np.asarray(self.data, dtype=self.dtype).reshape(self.shape or [len(self.data)])

    def to_torch(self):
        import torch

        return torch.from_numpy(self.to_numpy())

    def tolist(self) -> list:
        return self.to_numpy().tolist()


def to_tensor_data(name: str, value: Any) -> TensorData:
    """Lists, numpy arrays and torch tensors become TensorData; known keys get their fixed dtype."""
    if isinstance(value, TensorData):
        return value
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    array = np.asarray(value)
    if name in ("target_tokens", "target_prompt_logprobs"):
        array = array.astype(np.int64)
    elif name in FLOAT_INPUTS:
        array = array.astype(np.float32)
    return TensorData.from_numpy(array)


class Datum(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)

    model_input: ModelInput
    loss_fn_inputs: dict[str, TensorData] = Field(default_factory=dict)

    @field_validator("loss_fn_inputs", mode="before")
    @classmethod
    def _convert(cls, value: dict) -> dict:
        return {k: to_tensor_data(k, v) for k, v in (value or {}).items()}


class AdamParams(BaseModel):
    learning_rate: float = 1e-4
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-12
    weight_decay: float = 0.0
    grad_clip_norm: float = 0.0


class SamplingParams(BaseModel):
    max_tokens: int | None = None
    seed: int | None = None
    stop: str | list[str] | list[int] | None = None
    temperature: float = 1.0
    top_k: int = -1
    top_p: float = 1.0


class LoraConfig(BaseModel):
    rank: int = 32
    seed: int | None = None
    train_unembed: bool = True
    train_mlp: bool = True
    train_attn: bool = True


class ForwardBackwardOutput(BaseModel):
    loss_fn_output_type: str = "ArrayRecord"
    loss_fn_outputs: list[dict[str, TensorData]]
    metrics: dict[str, float]


class OptimStepResponse(BaseModel):
    metrics: dict[str, float] | None = None


class SampledSequence(BaseModel):
    tokens: list[int]
    logprobs: list[float] | None = None
    stop_reason: StopReason
    sequence_id: str | None = None
    # with sample(topk_sample_logprobs=K): per position, the K most likely (token, logprob) under the
    # model's own distribution (before temperature, top_k, top_p)
    topk_logprobs: list[list[tuple[int, float]]] | None = None


class SampleResponse(BaseModel):
    sequences: list[SampledSequence]
    prompt_logprobs: list[float | None] | None = None
    topk_prompt_logprobs: list[list[tuple[int, float]] | None] | None = None
    # with sample(target_prompt_logprobs=ids [len(prompt) - 1, K]): the logprob of each asked id at
    # each prompt position after the first, float32 of the same shape (-1 cells are not scored)
    target_prompt_logprobs: TensorData | None = None
    prompt_cache_hit_tokens: int = 0


class SaveWeightsResponse(BaseModel):
    path: str


class SaveWeightsForSamplerResponse(BaseModel):
    path: str | None = None
    sampling_session_id: str | None = None


class GetInfoResponse(BaseModel):
    model_id: str
    model_data: dict[str, Any]
    is_lora: bool | None = None
    lora_rank: int | None = None
    model_name: str | None = None


def reduce_metrics(chunks: list[dict[str, float]], sizes: list[int]) -> dict[str, float]:
    """Merge chunk metrics by their `name:reduction` suffix (mean is weighted by datums)."""
    merged: dict[str, float] = {}
    for key in set.intersection(*(set(c) for c in chunks)) if chunks else set():
        values = [c[key] for c in chunks]
        reduction = key.rsplit(":", 1)[-1]
        if reduction == "sum":
            merged[key] = float(sum(values))
        elif reduction == "mean":
            merged[key] = float(sum(v * n for v, n in zip(values, sizes)) / max(sum(sizes), 1))
        elif reduction == "min":
            merged[key] = float(min(values))
        elif reduction == "max":
            merged[key] = float(max(values))
    return merged
