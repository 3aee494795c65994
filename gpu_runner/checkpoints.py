"""Adapter state on disk, safetensors only (never pickle).

Three formats:
- training state (`save_state`/`load_state`): `adapter.safetensors` with engine names
  (`<module>.lora_A`), `optimizer.safetensors` with AdamW moments and step, and `lora_spec.json`.
- spill (`write_spill`/`read_spill`): training state plus pending gradients, `grads.safetensors`.
- PEFT adapter (`export_peft`/`import_peft`): `adapter_config.json` + `adapter_model.safetensors`
  with PEFT's key names, loadable by `peft.PeftModel.from_pretrained` and vLLM.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig
from safetensors.torch import load_file, save_file

from .adapters import Adapter
from .errors import EngineInputError
from .types import LoraSpec

SPEC_FILE = "lora_spec.json"
WEIGHTS_FILE = "adapter.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
GRADS_FILE = "grads.safetensors"
PEFT_CONFIG_FILE = "adapter_config.json"
PEFT_WEIGHTS_FILE = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."


def directory_size(directory: Path) -> int:
    return sum(f.stat().st_size for f in Path(directory).rglob("*") if f.is_file())


def save_state(adapter: Adapter, directory: Path, include_optimizer: bool = True) -> None:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / SPEC_FILE).write_text(json.dumps(dataclasses.asdict(adapter.spec)))
    save_file(
        {k: v.detach().contiguous().cpu() for k, v in adapter.named_tensors().items()}, str(directory / WEIGHTS_FILE)
    )
    if include_optimizer:
        save_file(_optimizer_tensors(adapter), str(directory / OPTIMIZER_FILE))


def load_state(adapter_id: str, directory: Path, device: torch.device, include_optimizer: bool = True) -> Adapter:
    directory = Path(directory)
    if not (directory / WEIGHTS_FILE).exists():
        raise EngineInputError(f"no training state at {directory}", field="path")
    spec = _spec_in(directory, **json.loads((directory / SPEC_FILE).read_text()))
    adapter = _adapter_from_named(adapter_id, spec, load_file(str(directory / WEIGHTS_FILE)), device)
    if include_optimizer:
        if not (directory / OPTIMIZER_FILE).exists():
            raise EngineInputError("this checkpoint holds no optimizer state", field="path")
        _restore_optimizer(adapter, load_file(str(directory / OPTIMIZER_FILE)), device)
    return adapter


def write_spill(adapter: Adapter, directory: Path) -> None:
    """Everything that makes an adapter resumable mid-step: state, optimizer, pending grads."""
    save_state(adapter, directory, include_optimizer=True)
    grads = {f"{i}": p.grad.detach().cpu() for i, p in enumerate(adapter.parameters()) if p.grad is not None}
    save_file(grads, str(Path(directory) / GRADS_FILE))


def read_spill(adapter_id: str, directory: Path, device: torch.device) -> Adapter:
    adapter = load_state(adapter_id, directory, device, include_optimizer=True)
    grads = load_file(str(Path(directory) / GRADS_FILE))
    for i, p in enumerate(adapter.parameters()):
        if str(i) in grads:
            p.grad = grads[str(i)].to(device)
    return adapter


def export_peft(adapter: Adapter, directory: Path, base_model_name: str) -> None:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    targets = sorted({name.rsplit(".", 1)[-1] for name in adapter.weights})
    config = LoraConfig(
        r=adapter.spec.rank,
        lora_alpha=adapter.spec.alpha,  # type: ignore[arg-type]  # peft annotates int; a float alpha works
        target_modules=targets,
        lora_dropout=0.0,
        bias="none",
        task_type="CAUSAL_LM",
        base_model_name_or_path=base_model_name,
    )
    config.save_pretrained(str(directory))
    tensors = {}
    for name, (lora_a, lora_b) in adapter.weights.items():
        tensors[f"{PEFT_PREFIX}{name}.lora_A.weight"] = lora_a.detach().contiguous().cpu()
        tensors[f"{PEFT_PREFIX}{name}.lora_B.weight"] = lora_b.detach().contiguous().cpu()
    save_file(tensors, str(directory / PEFT_WEIGHTS_FILE), metadata={"format": "pt"})


def import_peft(adapter_id: str, directory: Path, device: torch.device, kinds: dict[str, str]) -> Adapter:
    """`kinds`: the engine's LoRA-taking modules and their kind, to tell which parts the adapter trains."""
    directory = Path(directory)
    if not (directory / PEFT_CONFIG_FILE).exists() or not (directory / PEFT_WEIGHTS_FILE).exists():
        raise EngineInputError(f"{directory} is not a PEFT adapter directory", field="path")
    config = json.loads((directory / PEFT_CONFIG_FILE).read_text())
    named = {}
    for key, tensor in load_file(str(directory / PEFT_WEIGHTS_FILE)).items():
        module = key.removeprefix(PEFT_PREFIX)
        for part in ("lora_A", "lora_B"):
            suffix = f".{part}.weight"
            if module.endswith(suffix):
                named[f"{module[: -len(suffix)]}.{part}"] = tensor
    present = {kinds.get(name.rsplit(".", 1)[0]) for name in named}
    spec = _spec_in(
        directory,
        rank=int(config["r"]),
        alpha=float(config.get("lora_alpha", config["r"])),
        train_attn="attn" in present,
        train_mlp="mlp" in present,
        train_unembed="unembed" in present,
    )
    return _adapter_from_named(adapter_id, spec, named, device)


def _spec_in(directory: Path, **fields: Any) -> LoraSpec:
    """The LoraSpec a checkpoint describes; a refusal names the checkpoint (the request's `path`),
    since the user chose a directory here, not a lora_config."""
    try:
        return LoraSpec(**fields)
    except EngineInputError as error:
        raise EngineInputError(f"{directory} holds an unusable LoRA config: {error}", field="path") from error


def _adapter_from_named(
    adapter_id: str, spec: LoraSpec, named: dict[str, torch.Tensor], device: torch.device
) -> Adapter:
    modules = sorted({key.rsplit(".", 1)[0] for key in named})
    weights = {
        m: (
            named[f"{m}.lora_A"].to(device, torch.float32).requires_grad_(True),
            named[f"{m}.lora_B"].to(device, torch.float32).requires_grad_(True),
        )
        for m in modules
    }
    return Adapter(adapter_id, spec, weights)


def _optimizer_tensors(adapter: Adapter) -> dict[str, torch.Tensor]:
    out = {}
    for i, p in enumerate(adapter.parameters()):
        for key, value in adapter.optimizer.state.get(p, {}).items():
            if torch.is_tensor(value):
                out[f"{i}.{key}"] = value.detach().contiguous().cpu()
    return out


def _restore_optimizer(adapter: Adapter, tensors: dict[str, torch.Tensor], device: torch.device) -> None:
    for i, p in enumerate(adapter.parameters()):
        state = {key.split(".", 1)[1]: t for key, t in tensors.items() if key.split(".", 1)[0] == str(i)}
        if state:
            adapter.optimizer.state[p] = {k: (v if k == "step" else v.to(device)) for k, v in state.items()}
