"""Built-in tiny models are ordinary HF directories, deterministic, and run through the engine."""

from __future__ import annotations

import hashlib

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from gpu_runner import Engine, describe_base_model
from gpu_runner.tiny_models import materialise
from gpu_runner.types import ForwardBackward, LoraSpec, Sample, SamplingParams

from .reference import peft_reference, reference_target_logprobs, sft_datum, train_steps


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_builds_are_deterministic_hf_directories(tmp_path):
    first, second = materialise("tiny-llama", tmp_path / "a"), materialise("tiny-llama", tmp_path / "b")
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert _digest(first / name) == _digest(second / name)
    tokenizer = AutoTokenizer.from_pretrained(first)
    model = AutoModelForCausalLM.from_pretrained(first)
    assert 500_000 < sum(p.numel() for p in model.parameters()) < 5_000_000
    chat = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hello"}], add_generation_prompt=True, tokenize=False
    )
    assert chat.startswith("<|im_start|>user\nHello<|im_end|>") and tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.decode(tokenizer("The quick brown fox")["input_ids"]) == "The quick brown fox"


def test_qwen3_architecture_trains_and_exports(engine_data_dir, tmp_path):
    info = describe_base_model("tiny-qwen3", engine_data_dir)
    assert info.arch == "Qwen3ForCausalLM" and info.max_context == 512
    qwen = Engine("tiny-qwen3", data_dir=engine_data_dir)
    qwen.create_adapter("q", LoraSpec(rank=4, seed=1))
    data = [sft_datum(qwen.tokenizer("Two plus two is four.")["input_ids"])]
    losses = train_steps(qwen, "q", data, steps=5)
    assert losses[-1] < losses[0]
    reference = peft_reference(qwen, "q", tmp_path / "q", trainable=False)
    (fwd, sample) = qwen.run_cycle(
        [
            ForwardBackward("q", data, forward_only=True),
            Sample("q", data[0].model_input, 1, SamplingParams(max_tokens=4, temperature=0)),
        ]
    )
    expected = reference_target_logprobs(reference, data[0].model_input, data[0].loss_fn_inputs["target_tokens"])
    torch.testing.assert_close(fwd.output.loss_fn_outputs[0]["logprobs"], expected.detach(), rtol=1e-5, atol=1e-5)
    assert sample.ok and len(sample.output.sequences[0].tokens) >= 1
