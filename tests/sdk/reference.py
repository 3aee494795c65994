"""Independent references for SDK tests: the engine in-process, and plain PEFT."""

from __future__ import annotations

from pathlib import Path

import torch

from ..platform.flow import LR, SEQUENCE, engine_losses  # noqa: F401 - one reference run for both suites


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
