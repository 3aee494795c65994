"""Helpers for engine tests, and the independent PEFT reference.

The reference side uses only transformers + peft + torch (never engine code) to compute what the
engine must match.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from gpu_runner import Engine
from gpu_runner.types import AdamParams, Datum, ExportPeft, ForwardBackward, LoraSpec, OptimStep

_ids = itertools.count()


def new_adapter(engine: Engine, **spec) -> str:
    adapter_id = f"adapter-{next(_ids)}"
    engine.create_adapter(adapter_id, LoraSpec(**spec))
    return adapter_id


def random_sequence(length: int, seed: int, vocab: int = 900) -> list[int]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(5, vocab, (length,), generator=generator).tolist()


def sft_datum(sequence: list[int], weights: torch.Tensor | None = None) -> Datum:
    n = len(sequence) - 1
    return Datum(
        sequence[:-1],
        {
            "target_tokens": torch.tensor(sequence[1:], dtype=torch.long),
            "weights": weights if weights is not None else torch.ones(n),
        },
    )


def train_steps(engine: Engine, adapter_id: str, data: list[Datum], steps: int, lr: float = 1e-2) -> list[float]:
    losses = []
    for _ in range(steps):
        fb, _ = engine.run_cycle(
            [ForwardBackward(adapter_id, data), OptimStep(adapter_id, AdamParams(learning_rate=lr))]
        )
        assert fb.ok, fb.error
        losses.append(fb.output.metrics["loss:sum"])
    return losses


def peft_reference(engine: Engine, adapter_id: str, directory: Path, trainable: bool = True):
    """A plain PEFT model holding the same adapter weights as `adapter_id` (fp32, CPU)."""
    (result,) = engine.run_cycle([ExportPeft(adapter_id, directory)])
    assert result.ok, result.error
    base = AutoModelForCausalLM.from_pretrained(engine.info.model_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(directory), is_trainable=trainable)
    model.eval()
    return model


def reference_target_logprobs(model, tokens: list[int], targets: torch.Tensor) -> torch.Tensor:
    logits = model(input_ids=torch.tensor([tokens])).logits[0].float()
    logprobs = torch.log_softmax(logits, dim=-1)
    if targets.dim() == 1:
        return logprobs.gather(-1, targets[:, None]).squeeze(-1)
    return logprobs.gather(-1, targets)


def engine_lora_tensors(engine: Engine, adapter_id: str) -> dict[str, torch.Tensor]:
    """Adapter tensors under PEFT parameter names, for comparing with a reference PeftModel."""
    out = {}
    for name, (lora_a, lora_b) in engine.adapter(adapter_id).weights.items():
        out[f"base_model.model.{name}.lora_A.default.weight"] = lora_a.detach().clone()
        out[f"base_model.model.{name}.lora_B.default.weight"] = lora_b.detach().clone()
    return out
