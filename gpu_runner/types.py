"""Plain data the engine takes and returns: operations of a cycle and their outputs.

These are the engine's whole public vocabulary. They hold torch tensors and Python scalars only,
so the platform converts its wire JSON into them and back without the engine knowing about HTTP.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from .errors import EngineInputError

MAX_RANK = 1024
# how expert LoRA factors are laid out (README "Expert LoRA"): one A shared by all experts on the input
# side of gate/up and one B shared on the output side of down (Tinker's), or every factor per expert
EXPERT_LAYOUTS = ("shared_outer", "per_expert")

StopReason = Literal["stop", "length"]
ErrorCategory = Literal["user", "server"]


@dataclass(frozen=True)
class LoraSpec:
    """What the user chose for one adapter; alpha/rank is the LoRA scale.

    Checks itself on construction (as peft's LoraConfig does), so every LoraSpec that exists is
    valid; a refusal is an EngineInputError whose `field` is the wire name under `lora_config`."""

    rank: int = 32
    alpha: float = 32.0
    seed: int | None = None
    train_attn: bool = True
    train_mlp: bool = True
    train_unembed: bool = True
    expert_layout: str = "shared_outer"  # one of EXPERT_LAYOUTS; only MoE models read it

    def __post_init__(self) -> None:
        if not _is_int(self.rank) or not 1 <= self.rank <= MAX_RANK:
            raise EngineInputError(f"lora_config.rank must be between 1 and {MAX_RANK}", field="lora_config.rank")
        if not (_is_number(self.alpha) and math.isfinite(self.alpha) and self.alpha > 0):
            raise EngineInputError("lora_config.alpha must be a finite number > 0", field="lora_config.alpha")
        if self.seed is not None and not _is_int(self.seed):
            raise EngineInputError("lora_config.seed must be an integer or null", field="lora_config.seed")
        if not (self.train_attn or self.train_mlp or self.train_unembed):
            raise EngineInputError(
                "at least one of train_attn, train_mlp, train_unembed must be true", field="lora_config"
            )
        if self.expert_layout not in EXPERT_LAYOUTS:
            raise EngineInputError(
                f"lora_config.expert_layout must be one of {', '.join(EXPERT_LAYOUTS)}",
                field="lora_config.expert_layout",
            )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # True is an int to Python, not to JSON


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class AdamParams:
    """AdamW hyper-parameters of one optim_step (DESIGN §3 defaults)."""

    learning_rate: float = 1e-4
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-12
    weight_decay: float = 0.0
    grad_clip_norm: float = 0.0


@dataclass(frozen=True)
class SamplingParams:
    """Generation controls; temperature 0 means greedy, `stop=None` means stop at EOS."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_k: int = -1
    top_p: float = 1.0
    stop: list[str] | list[int] | None = None
    seed: int | None = None


@dataclass
class Datum:
    """One training example: `model_input[t]` predicts `loss_fn_inputs['target_tokens'][t]`."""

    model_input: list[int]
    loss_fn_inputs: dict[str, torch.Tensor] = field(default_factory=dict)


# ---- operations of a cycle -------------------------------------------------------------------


@dataclass
class ForwardBackward:
    adapter_id: str
    data: list[Datum]
    loss_fn: str = "cross_entropy"
    loss_fn_config: dict[str, float] | None = None
    forward_only: bool = False


@dataclass
class OptimStep:
    adapter_id: str
    params: AdamParams = field(default_factory=AdamParams)


@dataclass
class Sample:
    """Sampling from `adapter_id` (None = the bare base model)."""

    adapter_id: str | None
    prompt: list[int]
    num_samples: int = 1
    params: SamplingParams = field(default_factory=SamplingParams)
    prompt_logprobs: bool = False
    topk_prompt_logprobs: int = 0
    # [len(prompt) - 1][K] token ids: row i asks the logprobs of these tokens at prompt position i + 1;
    # -1 cells ask nothing (their answer is 0.0)
    target_prompt_tokens: list[list[int]] | None = None
    # K > 0: each sampled position also reports its K most likely tokens (SampledSequence.topk_logprobs);
    # 0 computes nothing extra
    topk_sample_logprobs: int = 0


@dataclass
class CreateAdapter:
    """Create `adapter_id` fresh from `spec` (its seed), replacing any adapter of that id: a model's
    creation, or the first step of rebuilding one the engine lost or holds a stale copy of."""

    adapter_id: str
    spec: LoraSpec


@dataclass
class SaveState:
    """Adapter weights (+ AdamW state when `include_optimizer`) as safetensors in `directory`."""

    adapter_id: str
    directory: Path
    include_optimizer: bool = True


@dataclass
class LoadState:
    """Create or overwrite `adapter_id` from a SaveState directory."""

    adapter_id: str
    directory: Path
    include_optimizer: bool = True


@dataclass
class ExportPeft:
    """Write a PEFT adapter directory (adapter_config.json + adapter_model.safetensors)."""

    adapter_id: str
    directory: Path


@dataclass
class ImportPeft:
    """Create `adapter_id` (weights only, fresh optimizer) from a PEFT adapter directory."""

    adapter_id: str
    directory: Path


# one operation of a cycle (the platform's `Operation` is its database row, not this)
EngineOp = ForwardBackward | OptimStep | Sample | SaveState | LoadState | ExportPeft | ImportPeft | CreateAdapter


# ---- outputs ---------------------------------------------------------------------------------


@dataclass
class ForwardBackwardOutput:
    """Per datum `{'logprobs': tensor shaped like target_tokens}` plus `loss:sum` etc."""

    loss_fn_outputs: list[dict[str, torch.Tensor]]
    metrics: dict[str, float]


@dataclass
class OptimStepOutput:
    metrics: dict[str, float]


@dataclass
class SampledSequence:
    """`logprobs`: each token's logprob under the distribution it was drawn from, temperature applied,
    before top-k/top-p truncation (temperature 0: the plain distribution).

    With `Sample.topk_sample_logprobs` = K > 0, also per position: `topk_logprobs`, the K most likely
    tokens (most likely first) with their logprobs under the model's own distribution (log_softmax of
    the logits, before temperature, top-k and top-p, as OpenAI's `top_logprobs`), and
    `model_logprobs`, the sampled token's logprob under that same distribution, so the two compare
    (at temperature 0 or 1 it equals `logprobs`). Both are None when K is 0."""

    tokens: list[int]
    logprobs: list[float]
    stop_reason: StopReason
    topk_logprobs: list[list[tuple[int, float]]] | None = None
    model_logprobs: list[float] | None = None


@dataclass
class SampleOutput:
    sequences: list[SampledSequence]
    prompt_logprobs: list[float | None] | None = None
    topk_prompt_logprobs: list[list[tuple[int, float]] | None] | None = None
    target_prompt_logprobs: list[list[float]] | None = None  # the shape of Sample.target_prompt_tokens


@dataclass
class CheckpointOutput:
    directory: Path
    size_bytes: int


Output = ForwardBackwardOutput | OptimStepOutput | SampleOutput | CheckpointOutput


@dataclass
class OpResult:
    """Outcome of one operation: `output` when ok, else `error` (+ who is to blame)."""

    output: Output | None = None
    error: str | None = None
    category: ErrorCategory | None = None

    @property
    def ok(self) -> bool:
        return self.error is None
