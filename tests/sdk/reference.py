"""Independent references for SDK tests: the engine in-process, and plain PEFT."""
from __future__ import annotations

from pathlib import Path

import torch

from gpu_runner import Engine
from gpu_runner.types import AdamParams, Datum, ExportPeft, ForwardBackward, LoraSpec, OptimStep

SEQUENCE = [3, 320, 265, 203, 44, 538, 83, 685, 4, 203, 3, 334, 87, 485, 88, 203, 41, 77]
LR = 1e-2


def engine_run(data_dir: Path, steps: int, export_to: Path) -> list[float]:
    """`steps` SFT steps on SEQUENCE in-process; exports the final adapter to `export_to`."""
    engine = Engine("tiny-llama", data_dir=data_dir)
    engine.create_adapter("reference", LoraSpec(rank=8, seed=1))
    datum = Datum(SEQUENCE[:-1], {"target_tokens": torch.tensor(SEQUENCE[1:]), "weights": torch.ones(len(SEQUENCE) - 1)})
    losses = []
    for _ in range(steps):
        fb, _ = engine.run_cycle([ForwardBackward("reference", [datum]), OptimStep("reference", AdamParams(learning_rate=LR))])
        losses.append(fb.output.metrics["loss:sum"])
    engine.run_cycle([ExportPeft("reference", export_to)])
    return losses


def peft_model(data_dir: Path, adapter_dir: Path, trainable: bool = False):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(data_dir / "models" / "tiny-llama", dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=trainable)
    return model.train(False)


def target_logprobs(model, tokens: list[int]) -> torch.Tensor:
    logits = model(input_ids=torch.tensor([tokens[:-1]])).logits[0].float()
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(tokens[1:])[:, None]).squeeze(-1)


def adapter_tensors(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(Path(directory) / "adapter_model.safetensors"))
