"""Any decoder's Linear layers take LoRA, whatever they are called: a GPT-NeoX model (fused
`query_key_value`, attention `dense`, `dense_h_to_4h`/`dense_4h_to_h`) trains through the engine,
and its PEFT export loads in `peft` with the engine's logits and the right parts trained."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM, GPTNeoXConfig

from gpu_runner import Engine
from gpu_runner.lora_layer import Routing, wrap_model
from gpu_runner.types import ForwardBackward, ImportPeft

from .reference import new_adapter, peft_reference, random_sequence, reference_target_logprobs, sft_datum, train_steps


@pytest.fixture(scope="module")
def neox_engine(engine, tmp_path_factory) -> Engine:
    directory = tmp_path_factory.mktemp("tiny-neox")
    vocab = len(engine.tokenizer)
    config = GPTNeoXConfig(
        vocab_size=vocab,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        bos_token_id=engine.tokenizer.bos_token_id,
        eos_token_id=engine.tokenizer.eos_token_id,
    )
    torch.manual_seed(5)
    AutoModelForCausalLM.from_config(config).save_pretrained(directory)
    for file in Path(engine.info.model_dir).iterdir():  # the tiny-llama tokenizer: same vocabulary size
        if "token" in file.name or file.name.endswith(".jinja"):
            shutil.copy(file, directory / file.name)
    return Engine(str(directory), data_dir=tmp_path_factory.mktemp("neox-data"))


def test_layers_of_every_kind_are_found(neox_engine):
    kinds = {name.rsplit(".", 1)[-1]: layer.kind for name, layer in neox_engine.layers.items()}
    assert kinds == {
        "query_key_value": "attn",
        "dense": "attn",
        "dense_h_to_4h": "mlp",
        "dense_4h_to_h": "mlp",
        "lm_head": "unembed",
    }
    assert len(neox_engine.layers) == 2 * 4 + 1


def test_neox_adapter_trains_and_exports_to_peft(neox_engine, tmp_path):
    data = [sft_datum(random_sequence(12, seed=91, vocab=len(neox_engine.tokenizer)))]
    adapter_id = new_adapter(neox_engine, rank=4, alpha=8, seed=3, train_unembed=False)
    losses = train_steps(neox_engine, adapter_id, data, steps=4)
    assert losses[-1] < losses[0]
    model = peft_reference(neox_engine, adapter_id, tmp_path / "export", trainable=False)
    targets = json.loads((tmp_path / "export" / "adapter_config.json").read_text())["target_modules"]
    assert sorted(targets) == ["dense", "dense_4h_to_h", "dense_h_to_4h", "query_key_value"]  # no lm_head
    (forward,) = neox_engine.run_cycle([ForwardBackward(adapter_id, data, forward_only=True)])
    expected = reference_target_logprobs(model, data[0].model_input, data[0].loss_fn_inputs["target_tokens"])
    torch.testing.assert_close(forward.output.loss_fn_outputs[0]["logprobs"], expected.detach(), rtol=1e-5, atol=1e-5)

    (imported,) = neox_engine.run_cycle([ImportPeft("neox-imported", tmp_path / "export")])
    assert imported.ok, imported.error
    spec = neox_engine.adapter("neox-imported").spec
    assert (spec.train_attn, spec.train_mlp, spec.train_unembed) == (True, True, False)


def test_a_model_without_attention_linears_is_refused(tmp_path):
    class OnlyHead(nn.Module):
        def __init__(self):
            super().__init__()
            self.lm_head = nn.Linear(4, 4)

        def get_output_embeddings(self):
            return self.lm_head

    with pytest.raises(ValueError, match="no attention or no MLP"):
        wrap_model(OnlyHead(), Routing())
