"""gpt-oss: eager attention with sinks, sliding and full attention layers, transposed experts with biases,
interleaved gate/up columns and a clamped swiglu. Packed rows must equal each sequence run alone through
plain transformers (its decoder builds masks without position_ids, so the engine hands them in), and the
expert LoRA must equal a plain copy of the model whose experts are merged `W_e + s * (B_e @ A_e)^T`."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.func import functional_call
from transformers import AutoModelForCausalLM, GptOssConfig

from gpu_runner import Engine, expert_lora
from gpu_runner.expert_lora import MultiLoraExperts
from gpu_runner.packed_masks import needs_packed_masks
from gpu_runner.support import base_model_refusal
from gpu_runner.tiny_models import VOCAB_SIZE
from gpu_runner.types import ForwardBackward, LoraSpec, Sample, SamplingParams

from .reference import random_sequence, sft_datum
from .test_model_families import _model_dir

LENGTHS = (7, 12, 3, 9, 5)


def gpt_oss_config() -> GptOssConfig:
    """Two layers (sliding window 4, then full), four experts of which each token takes two."""
    return GptOssConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=32,
        intermediate_size=24,
        num_hidden_layers=2,
        num_local_experts=4,
        num_experts_per_tok=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        sliding_window=4,
        layer_types=["sliding_attention", "full_attention"],
        max_position_embeddings=256,
    )


def gpt_oss_dir(directory: Path, engine_data_dir: Path) -> Path:
    """A saved random gpt-oss whose expert biases, sinks and router are not zero (the init zeroes the
    biases, which would hide a bias handled wrong)."""
    directory = _model_dir(gpt_oss_config(), directory, engine_data_dir)
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    generator = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("_bias", "sinks")) or ".router." in name:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.5)
    model.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def oss_engine(engine_data_dir, tmp_path_factory) -> Engine:
    """Rows of 32 tokens, so several sequences share a row."""
    directory = gpt_oss_dir(tmp_path_factory.mktemp("gpt-oss"), engine_data_dir)
    return Engine(str(directory), data_dir=engine_data_dir, pack_row_tokens=32)


@pytest.fixture(scope="module")
def plain_model(oss_engine):
    model = AutoModelForCausalLM.from_pretrained(oss_engine.info.model_dir, dtype=torch.float32)
    model.eval()
    model.requires_grad_(False)
    return model


def test_gpt_oss_loads_with_eager_attention_and_its_experts_take_lora(oss_engine):
    assert oss_engine.model.config._attn_implementation == "eager"
    assert base_model_refusal(oss_engine.info.model_dir) is None
    experts = [n for n, layer in oss_engine.layers.items() if isinstance(layer, MultiLoraExperts)]
    assert experts == ["model.layers.0.mlp.experts", "model.layers.1.mlp.experts"]
    assert not any("router" in name for name in oss_engine.layers)
    assert {"model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.o_proj"} <= set(oss_engine.layers)


def test_packed_rows_equal_each_sequence_alone_through_plain_transformers(oss_engine, plain_model):
    oss_engine.create_adapter("packed", LoraSpec(rank=4, seed=3))  # B = 0: the base model's logprobs
    data = [sft_datum(random_sequence(n + 1, seed=70 + i)) for i, n in enumerate(LENGTHS)]
    (result,) = oss_engine.run_cycle([ForwardBackward("packed", data, forward_only=True)])
    assert result.ok, result.error
    for datum, out in zip(data, result.output.loss_fn_outputs):
        with torch.no_grad():
            logits = plain_model(input_ids=torch.tensor([datum.model_input])).logits[0]
        targets = datum.loss_fn_inputs["target_tokens"]
        expected = torch.log_softmax(logits, -1).gather(-1, targets[:, None])[:, 0]
        torch.testing.assert_close(out["logprobs"], expected, rtol=1e-5, atol=1e-5)
    oss_engine.remove_adapter("packed")


def test_without_the_engines_masks_gpt_oss_packed_sequences_would_leak(oss_engine, plain_model):
    """Why the engine builds gpt-oss's masks: its decoder builds them without position_ids, so plain
    transformers lets a packed row's second sequence attend to the first."""
    assert needs_packed_masks(plain_model.model)
    assert not needs_packed_masks(AutoModelForCausalLM.from_config(_llama_config()).model)
    first, second = random_sequence(8, seed=7), random_sequence(8, seed=8)
    ids, positions = torch.tensor([first + second]), torch.tensor([list(range(8)) * 2])
    with torch.no_grad():
        alone = plain_model.model(input_ids=torch.tensor([second]), use_cache=False).last_hidden_state[0]
        leaking = plain_model.model(input_ids=ids, position_ids=positions, use_cache=False).last_hidden_state[0, 8:]
        packed = oss_engine.model.model(input_ids=ids, position_ids=positions, use_cache=False).last_hidden_state
    torch.testing.assert_close(packed[0, 8:], alone, rtol=1e-5, atol=1e-5)
    assert (leaking - alone).abs().max() > 1e-2


def _llama_config():
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)


def _merged_params(model, weights, scale):
    """gpt-oss stores experts in x out: W_e + s * (B_e @ A_e)^T; attention Linears W + s * B @ A."""
    params = dict(model.named_parameters())
    merged = {}
    for name, (lora_a, lora_b) in weights.items():
        key = name if name in params else f"{name}.weight"
        delta = torch.matmul(lora_b, lora_a)  # 3-D: a shared factor broadcasts over experts
        merged[key] = params[key] + scale * (delta.transpose(-1, -2) if delta.dim() == 3 else delta)
    return merged


@pytest.fixture(params=["loop", "grouped"])
def backend(request, oss_engine, monkeypatch):
    """The experts' LoRA by the loop over experts, or by grouped GEMMs (made to pass for supported here)."""
    if request.param == "grouped":
        monkeypatch.setattr(expert_lora, "grouped_experts_supported", lambda hidden, dims: True)
    else:
        monkeypatch.setattr(oss_engine.routing, "backend", "loop")
    return request.param


@pytest.mark.parametrize("layout", ["shared_outer", "per_expert"])
def test_two_tenants_expert_lora_equals_the_merged_reference_forward_and_gradients(
    oss_engine, plain_model, layout, backend
):
    ids = [f"{layout}-{backend}-a", f"{layout}-{backend}-b"]
    for seed, adapter_id in enumerate(ids, start=1):
        oss_engine.create_adapter(adapter_id, LoraSpec(rank=4, alpha=8, seed=seed, expert_layout=layout))
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for _, lora_b in oss_engine.adapter(adapter_id).weights.values():
                lora_b.copy_(torch.randn(lora_b.shape, generator=generator) * 0.2)
    data = {i: [sft_datum(random_sequence(n, seed=80 + n))] for i, n in zip(ids, (11, 9))}
    fused = oss_engine.run_cycle([ForwardBackward(i, data[i]) for i in ids])
    assert all(r.ok for r in fused), [r.error for r in fused]
    for k, adapter_id in enumerate(ids):
        adapter = oss_engine.adapter(adapter_id)
        leaves = {
            n: (a.detach().clone().requires_grad_(True), b.detach().clone().requires_grad_(True))
            for n, (a, b) in adapter.weights.items()
        }
        datum = data[adapter_id][0]
        params = _merged_params(plain_model, leaves, adapter.scale)
        kwargs = {"input_ids": torch.tensor([datum.model_input])}
        logits = functional_call(plain_model, params, args=(), kwargs=kwargs).logits[0]
        targets = datum.loss_fn_inputs["target_tokens"]
        expected = torch.log_softmax(logits, -1).gather(-1, targets[:, None])[:, 0]
        (-expected.sum()).backward()
        torch.testing.assert_close(fused[k].output.loss_fn_outputs[0]["logprobs"], expected.detach(), rtol=0, atol=1e-5)
        assert any("experts" in name for name in adapter.weights)
        for name, (a, b) in adapter.weights.items():
            for got, want in ((a.grad, leaves[name][0].grad), (b.grad, leaves[name][1].grad)):
                scale = want.abs().max().clamp_min(1e-6)
                assert ((got - want).abs().max() / scale) <= 1e-5, name
        oss_engine.remove_adapter(adapter_id)


def test_batched_greedy_decoding_past_the_sliding_window_equals_plain_transformers(oss_engine, plain_model):
    """Two prompts of different lengths decoded in one batch (padded rows, the KV cache, sliding layers
    of window 4 outgrown): each equals plain transformers' argmax, token by token, on its own."""
    prompts = [random_sequence(3, seed=90), random_sequence(7, seed=91)]
    params = SamplingParams(max_tokens=6, temperature=0, stop=[])
    results = oss_engine.run_cycle([Sample(None, prompt, 1, params) for prompt in prompts])
    for prompt, result in zip(prompts, results):
        assert result.ok, result.error
        tokens = list(prompt)
        with torch.no_grad():
            for _ in range(6):
                tokens.append(int(plain_model(input_ids=torch.tensor([tokens])).logits[0, -1].argmax()))
        assert result.output.sequences[0].tokens == tokens[len(prompt) :]
