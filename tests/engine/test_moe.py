"""Mixture-of-experts LoRA on `tiny-qwen3-moe` (fused 3-D experts, every layer sparse).

The reference never uses engine code: a plain transformers copy of the model whose weights are
`W + s * B @ A` (experts: `W_e + s * B_e @ A_e`, a shared factor broadcast over experts), through
`torch.func.functional_call`, so its gradients to A and B are autograd's on the merged weights."""

from __future__ import annotations

import json

import pytest
import torch
from torch.func import functional_call
from transformers import AutoModelForCausalLM

from gpu_runner import Engine, expert_lora
from gpu_runner.errors import EngineInputError
from gpu_runner.expert_lora import MultiLoraExperts
from gpu_runner.support import base_model_refusal
from gpu_runner.types import ForwardBackward, ImportPeft, LoadState, LoraSpec, Sample, SamplingParams, SaveState

from .reference import peft_reference, random_sequence, reference_target_logprobs, sft_datum, train_steps


@pytest.fixture(scope="module")
def moe_engine(engine_data_dir) -> Engine:
    return Engine("tiny-qwen3-moe", data_dir=engine_data_dir, max_pass_tokens=4096)


@pytest.fixture(scope="module")
def plain_model(moe_engine):
    model = AutoModelForCausalLM.from_pretrained(moe_engine.info.model_dir, dtype=torch.float32)
    model.eval()
    model.requires_grad_(False)
    return model


def test_every_layer_is_sparse_and_its_experts_take_lora(moe_engine):
    config = moe_engine.model.config
    assert config.num_experts == 8 and config.num_hidden_layers == 2
    experts = {n: layer for n, layer in moe_engine.layers.items() if isinstance(layer, MultiLoraExperts)}
    assert sorted(experts) == [f"model.layers.{i}.mlp.experts" for i in range(config.num_hidden_layers)]
    assert all(layer.kind == "mlp" for layer in experts.values())
    assert not any(".gate" in name for name in moe_engine.layers)  # no LoRA on the router
    assert base_model_refusal(moe_engine.info.model_dir) is None


def _seeded_adapter(engine: Engine, adapter_id: str, seed: int, **spec) -> None:
    """An adapter whose B factors are random too (B = 0 at init would hide every delta)."""
    engine.create_adapter(adapter_id, LoraSpec(seed=seed, **spec))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, lora_b in engine.adapter(adapter_id).weights.values():
            lora_b.copy_(torch.randn(lora_b.shape, generator=generator) * 0.2)


def _merged_params(model, weights, scale):
    """{parameter name: W + s * B @ A} for every adapted module of the plain model."""
    params = dict(model.named_parameters())
    merged = {}
    for name, (lora_a, lora_b) in weights.items():
        key = name if name in params else f"{name}.weight"
        merged[key] = params[key] + scale * torch.matmul(lora_b, lora_a)  # 3-D: broadcast over experts
    return merged


def _reference(model, adapter, datum):
    """Target logprobs and gradients {weight name: (dA, dB)} of the cross-entropy sum."""
    leaves = {
        n: (a.detach().clone().requires_grad_(True), b.detach().clone().requires_grad_(True))
        for n, (a, b) in adapter.weights.items()
    }
    params = _merged_params(model, leaves, adapter.scale)
    tokens = torch.tensor([datum.model_input])
    logits = functional_call(model, params, args=(), kwargs={"input_ids": tokens}).logits[0].float()
    targets = datum.loss_fn_inputs["target_tokens"]
    logprobs = torch.log_softmax(logits, -1).gather(-1, targets[:, None]).squeeze(-1)
    (-(logprobs * datum.loss_fn_inputs["weights"]).sum()).backward()
    return logprobs.detach(), {n: (a.grad, b.grad) for n, (a, b) in leaves.items()}


def _engine_grads(engine, adapter_id):
    out = {}
    for name, (a, b) in engine.adapter(adapter_id).weights.items():
        out[name] = (a.grad.clone(), b.grad.clone())
        a.grad = b.grad = None
    return out


@pytest.fixture(params=["loop", "grouped"])
def backend(request, moe_engine, monkeypatch):
    """The experts' LoRA computed by the loop over experts, or by grouped GEMMs ("auto" picks those only
    on CUDA bf16: here they are made to pass for supported, the Linears keep their CPU choice)."""
    if request.param == "grouped":
        monkeypatch.setattr(expert_lora, "grouped_experts_supported", lambda hidden, dims: True)
    else:
        monkeypatch.setattr(moe_engine.routing, "backend", "loop")
    return request.param


@pytest.mark.parametrize("layout", ["shared_outer", "per_expert"])
def test_three_tenants_in_one_pass_equal_each_alone_and_the_merged_reference(moe_engine, plain_model, layout, backend):
    ids = [f"{layout}-{backend}-a", f"{layout}-{backend}-b", f"{layout}-{backend}-c"]
    _seeded_adapter(moe_engine, ids[0], 1, rank=4, alpha=8, expert_layout=layout)
    _seeded_adapter(moe_engine, ids[1], 2, rank=8, alpha=8, expert_layout=layout)
    _seeded_adapter(moe_engine, ids[2], 3, rank=4, train_mlp=False)  # no expert LoRA
    assert not any("experts" in n for n in moe_engine.adapter(ids[2]).weights)
    shared = moe_engine.adapter(ids[0]).weights["model.layers.0.mlp.experts.gate_up_proj"][0].shape[0]
    assert shared == (1 if layout == "shared_outer" else 8)
    data = {i: [sft_datum(random_sequence(n, seed=40 + n))] for i, n in zip(ids, (9, 13, 7))}

    fused = moe_engine.run_cycle([ForwardBackward(i, data[i]) for i in ids])
    assert all(r.ok for r in fused), [r.error for r in fused]
    fused_grads = {i: _engine_grads(moe_engine, i) for i in ids}
    for k, adapter_id in enumerate(ids):
        (alone,) = moe_engine.run_cycle([ForwardBackward(adapter_id, data[adapter_id])])
        alone_grads = _engine_grads(moe_engine, adapter_id)
        got = fused[k].output.loss_fn_outputs[0]["logprobs"]
        torch.testing.assert_close(got, alone.output.loss_fn_outputs[0]["logprobs"], rtol=0, atol=1e-5)
        expected, reference_grads = _reference(plain_model, moe_engine.adapter(adapter_id), data[adapter_id][0])
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
        for name, (ga, gb) in fused_grads[adapter_id].items():
            for got_grad, want in ((ga, reference_grads[name][0]), (gb, reference_grads[name][1])):
                _assert_grad_close(got_grad, want, name)
            _assert_grad_close(ga, alone_grads[name][0], name)
            _assert_grad_close(gb, alone_grads[name][1], name)
        moe_engine.remove_adapter(adapter_id)


def _assert_grad_close(got: torch.Tensor, want: torch.Tensor, name: str) -> None:
    """<= 1e-5 relative to the gradient's own scale (fp32 sums of different orders differ in the last bits)."""
    error = float((got - want).abs().max()) / max(1.0, float(want.abs().max()))
    assert error <= 1e-5, f"{name}: gradient off by {error:.2e} of its scale"


def test_expert_lora_bytes_are_counted_exactly(moe_engine):
    config = moe_engine.model.config
    rank, experts, hidden, inner = 4, config.num_experts, config.hidden_size, config.moe_intermediate_size
    linears = sum(
        rank * (m.in_features + m.out_features)
        for name, m in AutoModelForCausalLM.from_config(config).named_modules()
        if isinstance(m, torch.nn.Linear) and ("self_attn" in name or name == "lm_head")
    )
    per_layer = {
        "shared_outer": rank * hidden + experts * 2 * inner * rank + experts * rank * inner + hidden * rank,
        "per_expert": experts * rank * (hidden + 2 * inner + inner + hidden),
    }
    for layout, expert_params in per_layer.items():
        moe_engine.create_adapter(f"bytes-{layout}", LoraSpec(rank=rank, seed=0, expert_layout=layout))
        adapter = moe_engine.adapter(f"bytes-{layout}")
        assert adapter.nbytes() == 4 * (linears + config.num_hidden_layers * expert_params)
        moe_engine.remove_adapter(f"bytes-{layout}")


@pytest.mark.parametrize("layout", ["shared_outer", "per_expert"])
def test_moe_adapter_trains_samples_and_round_trips_its_state(moe_engine, tmp_path, layout):
    adapter_id = f"train-{layout}"
    moe_engine.create_adapter(adapter_id, LoraSpec(rank=4, alpha=8, seed=5, expert_layout=layout))
    data = [sft_datum(random_sequence(12, seed=71)), sft_datum(random_sequence(9, seed=72))]
    losses = train_steps(moe_engine, adapter_id, data, steps=3, lr=2e-2)
    assert losses[-1] < losses[0]
    experts_b = moe_engine.adapter(adapter_id).weights["model.layers.1.mlp.experts.down_proj"][1]
    assert experts_b.abs().sum() > 0  # the expert factors trained, not only attention
    (sample,) = moe_engine.run_cycle(
        [Sample(adapter_id, data[0].model_input[:5], 2, SamplingParams(max_tokens=4, temperature=1.0, seed=3))]
    )
    assert sample.ok, sample.error
    assert [len(s.tokens) for s in sample.output.sequences] and all(s.tokens for s in sample.output.sequences)
    results = moe_engine.run_cycle(
        [
            SaveState(adapter_id, tmp_path / "state"),
            LoadState(f"{adapter_id}-loaded", tmp_path / "state"),
            ForwardBackward(adapter_id, data, forward_only=True),
            ForwardBackward(f"{adapter_id}-loaded", data, forward_only=True),
        ]
    )
    assert all(r.ok for r in results), [r.error for r in results]
    assert moe_engine.adapter(f"{adapter_id}-loaded").spec.expert_layout == layout
    for before, after in zip(results[2].output.loss_fn_outputs, results[3].output.loss_fn_outputs):
        torch.testing.assert_close(before["logprobs"], after["logprobs"], rtol=0, atol=1e-6)


def test_an_unknown_expert_layout_is_refused_naming_the_field():
    with pytest.raises(EngineInputError) as refused:
        LoraSpec(expert_layout="interleaved")
    assert refused.value.field == "lora_config.expert_layout"


@pytest.mark.parametrize("layout", ["shared_outer", "per_expert"])
def test_peft_export_holds_expert_tensors_and_gives_the_engines_logprobs(moe_engine, tmp_path, layout):
    adapter_id = f"export-{layout}"
    _seeded_adapter(moe_engine, adapter_id, 11, rank=4, alpha=8, expert_layout=layout)
    data = [sft_datum(random_sequence(10, seed=81))]
    model = peft_reference(moe_engine, adapter_id, tmp_path / "peft", trainable=False)
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert sorted(config["target_parameters"]) == ["experts.down_proj", "experts.gate_up_proj"]
    experts = model.base_model.model.model.layers[0].mlp.experts  # peft's nested wrappers: down over gate_up
    assert type(experts).__name__ == "ParamWrapper" and experts.parameter_name == "down_proj"
    (forward,) = moe_engine.run_cycle([ForwardBackward(adapter_id, data, forward_only=True)])
    expected = reference_target_logprobs(model, data[0].model_input, data[0].loss_fn_inputs["target_tokens"])
    torch.testing.assert_close(forward.output.loss_fn_outputs[0]["logprobs"], expected.detach(), rtol=0, atol=1e-4)
    # greedy decoding (expert LoRA under the KV cache) = argmax of peft's full forward, token by token
    prompt = data[0].model_input[:5]
    (greedy,) = moe_engine.run_cycle([Sample(adapter_id, prompt, 1, SamplingParams(max_tokens=3, temperature=0))])
    tokens = list(prompt)
    with torch.no_grad():
        for _ in range(3):
            tokens.append(int(model(input_ids=torch.tensor([tokens])).logits[0, -1].argmax()))
    assert greedy.output.sequences[0].tokens == tokens[len(prompt) :]

    (imported,) = moe_engine.run_cycle([ImportPeft(f"{adapter_id}-imported", tmp_path / "peft")])
    assert imported.ok, imported.error
    back = moe_engine.adapter(f"{adapter_id}-imported")
    assert back.spec.expert_layout == layout
    for name, (lora_a, lora_b) in moe_engine.adapter(adapter_id).weights.items():
        torch.testing.assert_close(back.weights[name][0], lora_a, rtol=0, atol=0)
        torch.testing.assert_close(back.weights[name][1], lora_b, rtol=0, atol=0)


class _Tenant:
    """An adapter as the experts module reads it: a scale and (A, B) pairs by weight name."""

    def __init__(self, scale: float, weights: dict):
        self.scale, self.weights = scale, weights

    def pair(self, name: str):
        return self.weights.get(name)


def _tenant(layer: MultiLoraExperts, rank: int, layout: str, seed: int, scale: float) -> _Tenant:
    generator = torch.Generator().manual_seed(seed)
    weights = {
        name: tuple(torch.randn(shape, generator=generator).mul_(0.3).requires_grad_(True) for shape in shapes)
        for name, shapes in layer.lora_shapes(rank, layout).items()
    }
    return _Tenant(scale, weights)


def _experts_modules():
    from transformers import Qwen3MoeConfig

    from .test_gpt_oss import gpt_oss_config

    qwen = Qwen3MoeConfig(hidden_size=32, moe_intermediate_size=24, num_experts=4, num_experts_per_tok=2)
    torch.manual_seed(0)
    for config in (qwen, gpt_oss_config()):
        block = AutoModelForCausalLM.from_config(config).model.layers[0].mlp
        with torch.no_grad():
            for name, p in block.named_parameters():
                if name.endswith("_bias"):
                    p.normal_(0, 0.5)
        yield type(block.experts).__name__, block.experts


@pytest.mark.parametrize("layouts", [("shared_outer",) * 3, ("per_expert",) * 3, ("shared_outer", "per_expert") * 2])
@pytest.mark.parametrize("name,base", list(_experts_modules()))
def test_grouped_expert_lora_equals_the_loop_forward_and_gradients(name, base, layouts):
    """Four tenants of different ranks, one without expert LoRA, all shared-outer (the shared factors
    applied per tenant), all per-expert, or mixed (shared factors expanded): grouped GEMMs over (expert,
    tenant) = the loop over experts and tenants, outputs and gradients to A, B and the hidden states."""
    from gpu_runner.lora_layer import Routing
    from gpu_runner.lora_math import Segment

    routing = Routing("loop")
    layer = MultiLoraExperts(base, "experts", routing)
    tenants = [
        _tenant(layer, 4, layouts[0], 1, 2.0),
        _tenant(layer, 8, layouts[1], 2, 0.5),
        None,
        _tenant(layer, 2, layouts[2], 3, 1.0),
    ]
    segments = [Segment(t, start, stop) for t, (start, stop) in zip(tenants, ((0, 5), (5, 12), (12, 15), (15, 19)))]
    tokens = 19
    generator = torch.Generator().manual_seed(4)
    hidden = torch.randn(tokens, layer.hidden, generator=generator)
    top_k_index = torch.stack([torch.randperm(layer.num_experts, generator=generator)[:2] for _ in range(tokens)])
    top_k_weights = torch.softmax(torch.randn(tokens, 2, generator=generator), -1)
    grad_out = torch.randn(tokens, layer.hidden, generator=generator)
    leaves = [hidden] + [t for tenant in tenants if tenant for pair in tenant.weights.values() for t in pair]

    results = {}
    for backend in ("loop", "grouped"):
        routing.backend = backend
        x = hidden.clone().requires_grad_(True)
        out = layer.forward_with(x, top_k_index, top_k_weights, segments)
        grads = torch.autograd.grad(out, [x, *leaves[1:]], grad_out)
        results[backend] = (out.detach(), grads)
    _assert_grad_close(results["grouped"][0], results["loop"][0], f"{name} output")  # <= 1e-5 of its scale
    for got, want in zip(results["grouped"][1], results["loop"][1]):
        _assert_grad_close(got, want, name)
    # without grad (decode steps) the stacks are kept for as long as the segments stay: same output twice
    routing.segments, routing.backend = segments, "grouped"
    with torch.no_grad():
        for _ in range(2):
            again = layer.forward_with(hidden, top_k_index, top_k_weights, segments)
            _assert_grad_close(again, results["loop"][0], f"{name} cached output")
    assert sorted(routing.expert_stacks) == ["experts.down_proj", "experts.gate_up_proj"]
    # and the LoRA is really there: without the tenants' deltas the output differs
    bare = base(hidden, top_k_index, top_k_weights)
    assert (bare - results["loop"][0]).abs().max() > 1e-2
