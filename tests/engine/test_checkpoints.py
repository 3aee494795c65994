"""State I/O: PEFT export loads in `peft` with equal logits; save/load with optimizer resumes
bit-for-bit; a PEFT directory imports back."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from gpu_runner.checkpoints import import_peft
from gpu_runner.errors import EngineInputError
from gpu_runner.types import ExportPeft, ForwardBackward, ImportPeft, LoadState, SaveState

from .reference import (
    engine_lora_tensors,
    new_adapter,
    peft_reference,
    random_sequence,
    reference_target_logprobs,
    sft_datum,
    train_steps,
)

DATA = [sft_datum(random_sequence(15, seed=77)), sft_datum(random_sequence(8, seed=78))]


def test_exported_peft_directory_gives_the_same_logits(engine, tmp_path):
    adapter_id = new_adapter(engine, rank=4, alpha=16, seed=2)
    train_steps(engine, adapter_id, DATA, steps=3)
    model = peft_reference(engine, adapter_id, tmp_path / "export", trainable=False)
    config = json.loads((tmp_path / "export" / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["lora_alpha"] == 16 and "lm_head" in config["target_modules"]
    (fwd,) = engine.run_cycle([ForwardBackward(adapter_id, DATA, forward_only=True)])
    for datum, out in zip(DATA, fwd.output.loss_fn_outputs):
        expected = reference_target_logprobs(model, datum.model_input, datum.loss_fn_inputs["target_tokens"])
        torch.testing.assert_close(out["logprobs"], expected.detach(), rtol=1e-5, atol=1e-5)


def test_save_and_load_with_optimizer_resumes_bit_for_bit(engine, tmp_path):
    original = new_adapter(engine, rank=4, seed=3)
    train_steps(engine, original, DATA, steps=2)
    (saved,) = engine.run_cycle([SaveState(original, tmp_path / "state")])
    assert saved.ok and saved.output.size_bytes > 0
    assert set(load_file(str(tmp_path / "state" / "optimizer.safetensors"))) >= {"0.exp_avg", "0.exp_avg_sq", "0.step"}
    train_steps(engine, original, DATA, steps=2)
    (loaded,) = engine.run_cycle([LoadState("resumed", tmp_path / "state", include_optimizer=True)])
    assert loaded.ok, loaded.error
    train_steps(engine, "resumed", DATA, steps=2)
    left, right = engine_lora_tensors(engine, original), engine_lora_tensors(engine, "resumed")
    assert all(torch.equal(left[k], right[k]) for k in left)


def test_load_without_optimizer_keeps_weights_and_restarts_moments(engine, tmp_path):
    original = new_adapter(engine, rank=4, seed=4)
    train_steps(engine, original, DATA, steps=2)
    engine.run_cycle([SaveState(original, tmp_path / "state")])
    (loaded,) = engine.run_cycle([LoadState("weights-only", tmp_path / "state", include_optimizer=False)])
    assert loaded.ok
    left, right = engine_lora_tensors(engine, original), engine_lora_tensors(engine, "weights-only")
    assert all(torch.equal(left[k], right[k]) for k in left)
    assert len(engine.adapter("weights-only").optimizer.state) == 0


def test_peft_directory_imports_back(engine, tmp_path):
    adapter_id = new_adapter(engine, rank=4, seed=6, train_mlp=False)
    train_steps(engine, adapter_id, DATA, steps=2)
    results = engine.run_cycle(
        [
            ExportPeft(adapter_id, tmp_path / "peft"),
            ImportPeft("imported", tmp_path / "peft"),
            ForwardBackward(adapter_id, DATA, forward_only=True),
            ForwardBackward("imported", DATA, forward_only=True),
        ]
    )
    assert all(r.ok for r in results), [r.error for r in results]
    assert engine.adapter("imported").spec.train_mlp is False
    for a, b in zip(results[2].output.loss_fn_outputs, results[3].output.loss_fn_outputs):
        # the two run packed side by side in one row: equal up to the float order of their positions
        torch.testing.assert_close(a["logprobs"], b["logprobs"], rtol=0, atol=1e-6)


def test_loading_a_missing_directory_is_a_user_error(engine, tmp_path):
    (result,) = engine.run_cycle([LoadState("nothing", tmp_path / "absent")])
    assert not result.ok and result.category == "user" and "no training state" in result.error


def test_a_peft_config_the_engine_cannot_use_is_a_user_error_naming_the_path(engine, tmp_path):
    adapter_id = new_adapter(engine, rank=4, seed=8)
    engine.run_cycle([ExportPeft(adapter_id, tmp_path / "peft")])
    config_file = tmp_path / "peft" / "adapter_config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "r": 2048}))
    with pytest.raises(EngineInputError) as caught:
        import_peft("too-wide", tmp_path / "peft", engine.device, {n: layer.kind for n, layer in engine.layers.items()})
    assert caught.value.field == "path"
    assert "lora_config.rank must be between 1 and 1024" in str(caught.value)
    (result,) = engine.run_cycle([ImportPeft("too-wide", tmp_path / "peft")])
    assert result.category == "user" and "holds an unusable LoRA config" in result.error
