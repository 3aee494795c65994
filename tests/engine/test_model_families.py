"""Families beyond the built-ins, each a tiny random config built here: DeepSeek-V3 (MLA projections,
a dense first layer, shared and routed experts) trains, samples, round-trips its state and exports a
PEFT adapter that peft loads with the engine's logprobs; so do Gemma 3 and gpt-oss (eager attention
with sinks, sliding and full layers, transposed biased experts); Llama 3 with tied embeddings keeps its
input embedding when the unembedding trains; an experts layout the engine cannot wrap (NemotronH's
ungated experts) is refused naming the architecture."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, DeepseekV3Config, Gemma3TextConfig, LlamaConfig, NemotronHConfig

from gpu_runner import Engine
from gpu_runner.errors import EngineInputError
from gpu_runner.lora_layer import Routing, wrap_model
from gpu_runner.support import base_model_refusal
from gpu_runner.tiny_models import VOCAB_SIZE, materialise
from gpu_runner.types import ForwardBackward, LoadState, LoraSpec, Sample, SamplingParams, SaveState

from .reference import peft_reference, random_sequence, reference_target_logprobs, sft_datum, train_steps


def _model_dir(config, directory: Path, engine_data_dir: Path) -> Path:
    """A save_pretrained directory of a random model of `config`, with the built-in tokenizer."""
    torch.manual_seed(7)
    AutoModelForCausalLM.from_config(config).save_pretrained(directory)
    for file in materialise("tiny-llama", engine_data_dir / "models").iterdir():
        if "token" in file.name or file.name.endswith(".jinja"):
            shutil.copy(file, directory / file.name)
    return directory


def _forward(engine: Engine, adapter_id: str, data) -> list[torch.Tensor]:
    (result,) = engine.run_cycle([ForwardBackward(adapter_id, data, forward_only=True)])
    assert result.ok, result.error
    return [out["logprobs"] for out in result.output.loss_fn_outputs]


def _trains_samples_round_trips_and_exports(engine: Engine, tmp_path: Path, **spec) -> Path:
    engine.create_adapter("a", LoraSpec(rank=4, alpha=8, seed=2, **spec))
    data = [sft_datum(random_sequence(11, seed=5)), sft_datum(random_sequence(8, seed=6))]
    losses = train_steps(engine, "a", data, steps=3, lr=2e-2)
    assert losses[-1] < losses[0]
    (sample,) = engine.run_cycle([Sample("a", data[0].model_input[:4], 1, SamplingParams(max_tokens=3, seed=1))])
    assert sample.ok and sample.output.sequences[0].tokens, sample.error
    saved, loaded = engine.run_cycle([SaveState("a", tmp_path / "state"), LoadState("b", tmp_path / "state")])
    assert saved.ok and loaded.ok, (saved.error, loaded.error)
    before, after = _forward(engine, "a", data), _forward(engine, "b", data)
    for x, y in zip(before, after):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
    model = peft_reference(engine, "a", tmp_path / "peft", trainable=False)
    for datum, got in zip(data, before):
        expected = reference_target_logprobs(model, datum.model_input, datum.loss_fn_inputs["target_tokens"])
        torch.testing.assert_close(got, expected.detach(), rtol=0, atol=1e-4)
    # greedy decoding through the engine's KV cache = argmax of peft's full forward, token by token
    prompt = data[1].model_input[:5]
    (greedy,) = engine.run_cycle([Sample("a", prompt, 1, SamplingParams(max_tokens=3, temperature=0))])
    tokens = list(prompt)
    with torch.no_grad():
        for _ in range(3):
            tokens.append(int(model(input_ids=torch.tensor([tokens])).logits[0, -1].argmax()))
    assert greedy.output.sequences[0].tokens == tokens[len(prompt) :]
    return tmp_path / "peft"


def test_deepseek_v3_exports_an_adapter_peft_loads_with_the_engines_logprobs(engine_data_dir, tmp_path):
    config = DeepseekV3Config(
        vocab_size=VOCAB_SIZE,
        hidden_size=48,
        intermediate_size=96,
        moe_intermediate_size=24,
        num_hidden_layers=2,
        first_k_dense_replace=1,  # layer 0 dense, layer 1 shared + routed experts
        n_routed_experts=4,
        num_experts_per_tok=2,
        n_group=2,
        topk_group=1,
        n_shared_experts=1,
        num_attention_heads=4,
        num_key_value_heads=4,
        q_lora_rank=24,
        kv_lora_rank=16,
        qk_rope_head_dim=8,
        qk_nope_head_dim=8,
        v_head_dim=8,
        max_position_embeddings=256,
        tie_word_embeddings=False,
    )
    engine = Engine(str(_model_dir(config, tmp_path / "ds3", engine_data_dir)), data_dir=engine_data_dir)
    names = set(engine.layers)
    assert {"model.layers.0.self_attn.q_a_proj", "model.layers.0.self_attn.kv_a_proj_with_mqa"} <= names
    assert {"model.layers.0.mlp.gate_proj", "model.layers.1.mlp.shared_experts.down_proj"} <= names
    assert "model.layers.1.mlp.experts" in names and "model.layers.1.mlp.gate" not in names
    export = _trains_samples_round_trips_and_exports(engine, tmp_path)
    # the regression: peft renames target_modules gate_proj/up_proj/down_proj of MoE models to the fused
    # experts (and drops those Linears' LoRA) on load, which put the export 0.57 nats away; the engine now
    # targets them as parameters, and the experts keep rank r
    config_json = json.loads((export / "adapter_config.json").read_text())
    assert not {"gate_proj", "up_proj", "down_proj"} & set(config_json["target_modules"])
    assert {"gate_proj.weight", "experts.gate_up_proj"} <= set(config_json["target_parameters"])


def test_tied_llama_unembedding_lora_leaves_the_input_embedding_alone(engine_data_dir, tmp_path):
    config = LlamaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
    )
    engine = Engine(str(_model_dir(config, tmp_path / "llama3", engine_data_dir)), data_dir=engine_data_dir)
    embedding = engine.model.get_input_embeddings().weight
    assert engine.layers["lm_head"].weight is embedding  # tied
    before = embedding.detach().clone()
    export = _trains_samples_round_trips_and_exports(engine, tmp_path, train_unembed=True)
    assert torch.equal(embedding, before)
    assert "lm_head" in json.loads((export / "adapter_config.json").read_text())["target_modules"]


def test_gemma3_text_with_sliding_and_full_attention_layers(engine_data_dir, tmp_path):
    config = Gemma3TextConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=12,
        sliding_window=4,
        layer_types=["sliding_attention", "full_attention"],
        max_position_embeddings=256,
    )
    engine = Engine(str(_model_dir(config, tmp_path / "gemma3", engine_data_dir)), data_dir=engine_data_dir)
    assert type(engine.model).__name__ == "Gemma3ForCausalLM"
    _trains_samples_round_trips_and_exports(engine, tmp_path)


@pytest.mark.parametrize("layout", ["shared_outer", "per_expert"])
def test_gpt_oss_with_sinks_sliding_layers_and_biased_transposed_experts(engine_data_dir, tmp_path, layout):
    from .test_gpt_oss import gpt_oss_dir

    engine = Engine(str(gpt_oss_dir(tmp_path / "gpt-oss", engine_data_dir)), data_dir=engine_data_dir)
    assert type(engine.model).__name__ == "GptOssForCausalLM"
    assert engine.model.config._attn_implementation == "eager"  # transformers has no SDPA with sinks
    assert engine.model.config.layer_types == ["sliding_attention", "full_attention"]
    export = _trains_samples_round_trips_and_exports(engine, tmp_path, expert_layout=layout)
    config_json = json.loads((export / "adapter_config.json").read_text())
    assert {"experts.gate_up_proj", "experts.down_proj"} <= set(config_json["target_parameters"])
    assert {"q_proj", "o_proj"} <= set(config_json["target_modules"])
    tensors = load_file(str(export / "adapter_model.safetensors"))
    # 4 experts of rank 4: peft's lora_A (E*r, d_in), lora_B (d_out, r*E); gate_up's d_out = 2I = 48
    gate_up_b = [t for key, t in tensors.items() if "experts" in key and key.endswith("lora_B.weight")]
    assert len(gate_up_b) == 4 and sorted(tuple(t.shape) for t in gate_up_b)[0] == (32, 16)
    assert any(tuple(t.shape) == (48, 16) for t in gate_up_b)


def test_an_experts_layout_the_engine_cannot_wrap_is_refused_naming_the_architecture(engine_data_dir, tmp_path):
    config = NemotronHConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=32,
        num_hidden_layers=2,
        layers_block_type=["moe", "attention"],
        n_routed_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=16,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        mamba_num_heads=4,
        mamba_head_dim=8,
        ssm_state_size=8,
        n_groups=1,
        max_position_embeddings=256,
    )
    model_dir = str(_model_dir(config, tmp_path / "nemotron-h", engine_data_dir))
    with pytest.raises(EngineInputError) as refused:  # ungated experts: up_proj + down_proj, no gate_up_proj
        Engine(model_dir, data_dir=engine_data_dir)
    assert refused.value.field == "base_model"
    assert "NemotronHForCausalLM" in str(refused.value) and "up_proj" in str(refused.value)
    assert "NemotronHForCausalLM" in (base_model_refusal(model_dir) or "")  # what the platform asks at the door
    with pytest.raises(EngineInputError):
        wrap_model(AutoModelForCausalLM.from_config(config), Routing())
