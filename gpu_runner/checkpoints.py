"""Adapter state on disk, safetensors only (never pickle).

Three formats:
- training state (`save_state`/`load_state`): `adapter.safetensors` with engine names
  (`<module>.lora_A`), `optimizer.safetensors` with AdamW moments and step, and `lora_spec.json`.
- spill (`write_spill`/`read_spill`): training state plus pending gradients, `grads.safetensors`.
- PEFT adapter (`export_peft`/`import_peft`): `adapter_config.json` + `adapter_model.safetensors`
  with PEFT's key names, loadable by `peft.PeftModel.from_pretrained` and vLLM.

Expert LoRA in PEFT (peft 0.21 `target_parameters`, README "Expert LoRA"): the engine keeps each
projection's factors as 3-D tensors, A (E|1, r, d_in) and B (E|1, d_out, r), a dim 0 of 1 being a
factor shared by all experts. peft gives every expert its own rank-r factors, packed as
`lora_A (E*r, d_in)` (expert e's rows e*r..e*r+r) and `lora_B (d_out, r*E)` (expert e's columns
e, E+e, 2E+e...: peft reads it as (d_out, r, E)); a shared factor is expanded to every expert. peft
nests one wrapper per targeted parameter, the first of `target_parameters` innermost, so the first
projection's keys carry `.base_layer` once more per later projection.
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


EXPERT_PROJECTIONS = ("gate_up_proj", "down_proj")  # the order of target_parameters: first is innermost


def export_peft(adapter: Adapter, directory: Path, base_model_name: str) -> None:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    linear = {name: pair for name, pair in adapter.weights.items() if pair[0].dim() == 2}
    experts = {name: pair for name, pair in adapter.weights.items() if pair[0].dim() == 3}
    # "<experts module leaf>.<projection>", e.g. "experts.gate_up_proj": peft matches parameter names by suffix
    parameters = [p for p in _expert_targets(experts) if any(name.endswith(f".{p}") or name == p for name in experts)]
    # peft (under transformers 5) rewrites the target_modules of MoE models as if they were transformers-4
    # expert names: gate_proj/up_proj/down_proj become the fused experts' parameters (gate_up_proj at rank
    # 2r) and leave target_modules, so the LoRA of the dense layers' and shared experts' MLP Linears would be
    # dropped on load (DeepSeek-V3's 0.57-nat mismatch). Such Linears are targeted through their `weight`
    # parameter instead (peft wraps a 2-D parameter exactly as a Linear: lora_A (r, in), lora_B (out, r)).
    by_parameter = sorted({name.rsplit(".", 1)[-1] for name in linear if experts and _renamed_by_peft(name)})
    parameters += [f"{leaf}.weight" for leaf in by_parameter]
    targets = sorted({name.rsplit(".", 1)[-1] for name in linear} - set(by_parameter))
    config = LoraConfig(
        r=adapter.spec.rank,
        lora_alpha=adapter.spec.alpha,  # type: ignore[arg-type]  # peft annotates int; a float alpha works
        target_modules=targets,
        target_parameters=parameters or None,
        lora_dropout=0.0,
        bias="none",
        task_type="CAUSAL_LM",
        base_model_name_or_path=base_model_name,
    )
    config.save_pretrained(str(directory))
    tensors = {}
    for name, (lora_a, lora_b) in linear.items():
        tensors[f"{PEFT_PREFIX}{name}.lora_A.weight"] = lora_a.detach().contiguous().cpu()
        tensors[f"{PEFT_PREFIX}{name}.lora_B.weight"] = lora_b.detach().contiguous().cpu()
    for name, (lora_a, lora_b) in experts.items():
        module, projection = name.rsplit(".", 1)
        key = f"{PEFT_PREFIX}{module}{_nesting(parameters, module, projection)}"
        peft_a, peft_b = _to_peft_experts(lora_a.detach().cpu(), lora_b.detach().cpu())
        tensors[f"{key}.lora_A.weight"], tensors[f"{key}.lora_B.weight"] = peft_a, peft_b
    save_file(tensors, str(directory / PEFT_WEIGHTS_FILE), metadata={"format": "pt"})


PEFT_V4_EXPERT_NAMES = ("gate_proj", "up_proj", "down_proj", "w1", "w2", "w3", "gate")


def _renamed_by_peft(name: str) -> bool:
    return name.rsplit(".", 1)[-1] in PEFT_V4_EXPERT_NAMES


def _expert_targets(experts: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> list[str]:
    leaves = sorted({name.rsplit(".", 1)[0].rsplit(".", 1)[-1] for name in experts})
    return [f"{leaf}.{projection}" for projection in EXPERT_PROJECTIONS for leaf in leaves]


def _nesting(parameters: list[str], module: str, projection: str) -> str:
    """`.base_layer` once per wrapper peft puts outside this projection's (the later targets)."""
    leaf = module.rsplit(".", 1)[-1]
    mine = [p for p in parameters if p.startswith(f"{leaf}.")]
    return ".base_layer" * (len(mine) - 1 - mine.index(f"{leaf}.{projection}"))


def _to_peft_experts(lora_a: torch.Tensor, lora_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A (E|1, r, d_in), B (E|1, d_out, r) -> peft's lora_A (E*r, d_in), lora_B (d_out, r*E)."""
    experts = max(lora_a.shape[0], lora_b.shape[0])
    full_a = lora_a.expand(experts, -1, -1)  # a shared factor: every expert's copy
    full_b = lora_b.expand(experts, -1, -1)
    rank, d_in = full_a.shape[1:]
    peft_a = full_a.reshape(experts * rank, d_in)
    peft_b = full_b.permute(1, 2, 0).reshape(full_b.shape[1], rank * experts)
    return peft_a.contiguous(), peft_b.contiguous()


def _from_peft_experts(peft_a: torch.Tensor, peft_b: torch.Tensor, experts: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The inverse of `_to_peft_experts`, per expert: A (E, r, d_in), B (E, d_out, r)."""
    lora_a = peft_a.reshape(experts, -1, peft_a.shape[-1])
    lora_b = peft_b.reshape(peft_b.shape[0], -1, experts).permute(2, 0, 1)
    return lora_a.contiguous(), lora_b.contiguous()


def _share_outer(named: dict[str, torch.Tensor]) -> str:
    """Collapse the outer factors (gate/up's A, down's B) back to one when every expert's copy is the
    same, as an exported shared-outer adapter's are; returns the expert layout found."""
    modules = [n.removesuffix(".gate_up_proj.lora_A") for n in named if n.endswith(".gate_up_proj.lora_A")]
    keys = [f"{m}.gate_up_proj.lora_A" for m in modules] + [
        f"{m}.down_proj.lora_B" for m in modules if f"{m}.down_proj.lora_B" in named
    ]
    tensors = [named[k] for k in keys if named[k].dim() == 3]
    if not tensors or not all(bool((t == t[:1]).all()) for t in tensors):
        return "per_expert"
    for key in keys:
        named[key] = named[key][:1].contiguous()
    return "shared_outer"


def import_peft(adapter_id: str, directory: Path, device: torch.device, kinds: dict[str, str]) -> Adapter:
    """`kinds`: the engine's LoRA-taking modules and their kind, to tell which parts the adapter trains."""
    directory = Path(directory)
    if not (directory / PEFT_CONFIG_FILE).exists() or not (directory / PEFT_WEIGHTS_FILE).exists():
        raise EngineInputError(f"{directory} is not a PEFT adapter directory", field="path")
    config = json.loads((directory / PEFT_CONFIG_FILE).read_text())
    rank = int(config["r"])
    named = {}
    for key, tensor in load_file(str(directory / PEFT_WEIGHTS_FILE)).items():
        module = key.removeprefix(PEFT_PREFIX)
        for part in ("lora_A", "lora_B"):
            suffix = f".{part}.weight"
            if module.endswith(suffix):
                named[f"{_unnest(module[: -len(suffix)], kinds)}.{part}"] = tensor
    for name in [n.removesuffix(".lora_A") for n in named if n.endswith(".lora_A")]:
        targeted = config.get("target_parameters") or []
        if any(name.endswith(f".{target}") for target in targeted) and f"{name}.lora_B" in named:
            experts = named[f"{name}.lora_A"].shape[0] // rank
            named[f"{name}.lora_A"], named[f"{name}.lora_B"] = _from_peft_experts(
                named[f"{name}.lora_A"], named[f"{name}.lora_B"], experts
            )
    present = {kinds.get(name.rsplit(".", 1)[0]) for name in named}
    layout = _share_outer(named)
    spec = _spec_in(
        directory,
        rank=rank,
        expert_layout=layout,
        alpha=float(config.get("lora_alpha", config["r"])),
        train_attn="attn" in present,
        train_mlp="mlp" in present,
        train_unembed="unembed" in present,
    )
    return _adapter_from_named(adapter_id, spec, named, device)


def _unnest(module: str, kinds: dict[str, str]) -> str:
    """peft's key of a nested expert wrapper -> the engine's weight name (`<experts>.<projection>`)."""
    if ".base_layer" not in module and module in kinds:
        return module
    depth = module.count(".base_layer")
    experts = module.replace(".base_layer", "")
    mine = [p for p in EXPERT_PROJECTIONS if f"{experts}.{p}" in kinds]
    if not mine or depth >= len(mine):
        return module  # not an expert module of this model: the shape check refuses it
    return f"{experts}.{mine[len(mine) - 1 - depth]}"


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
    # copy=True: fresh, aligned memory, not a view of the file's buffer, whose offsets can send BLAS
    # down another kernel and make a resumed run differ from the original in the last bits
    weights = {
        m: (
            named[f"{m}.lora_A"].to(device, torch.float32, copy=True).requires_grad_(True),
            named[f"{m}.lora_B"].to(device, torch.float32, copy=True).requires_grad_(True),
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
            adapter.optimizer.state[p] = {k: (v if k == "step" else v.to(device, copy=True)) for k, v in state.items()}
