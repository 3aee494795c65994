"""Built-in tiny models: real Hugging Face directories built locally, deterministically.

No machine here can download weights, so tests, the demo and the benchmarks run on these. They are
ordinary `save_pretrained` directories (config, safetensors weights, tokenizer files with a chat
template), so they go through exactly the loading path of a real hub model.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    GenerationConfig,
    LlamaConfig,
    PreTrainedConfig,
    PreTrainedTokenizerFast,
    Qwen3Config,
    Qwen3MoeConfig,
)

CORPUS = Path(__file__).with_name("data") / "corpus.txt"
SPECIAL_TOKENS = ["<|pad|>", "<|bos|>", "<|eos|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
VOCAB_SIZE = 1024


# what the tiny decoders share; each recipe adds its architecture and the sizes that tell it apart
_COMMON_CONFIG: dict[str, Any] = {
    "hidden_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
    "tie_word_embeddings": False,
    "dtype": "float32",
}


@dataclass(frozen=True)
class TinyModelRecipe:
    name: str
    config_class: Callable[..., PreTrainedConfig]  # LlamaConfig, Qwen3Config, ...
    sizes: dict[str, Any]  # on top of _COMMON_CONFIG (and overriding it)
    seed: int

    def make_config(self, token_ids: dict[str, int], vocab_size: int) -> PreTrainedConfig:
        return self.config_class(vocab_size=vocab_size, **{**_COMMON_CONFIG, **self.sizes}, **token_ids)


RECIPES = {
    "tiny-llama": TinyModelRecipe(
        "tiny-llama", LlamaConfig, {"intermediate_size": 352, "num_hidden_layers": 4}, seed=1234
    ),
    "tiny-qwen3": TinyModelRecipe(
        "tiny-qwen3", Qwen3Config, {"intermediate_size": 320, "num_hidden_layers": 3, "head_dim": 32}, seed=4321
    ),
    # every layer sparse (decoder_sparse_step 1, no mlp_only_layers): 8 experts, top-2, fused 3-D expert weights
    "tiny-qwen3-moe": TinyModelRecipe(
        "tiny-qwen3-moe",
        Qwen3MoeConfig,
        {
            "hidden_size": 64,
            "intermediate_size": 128,
            "moe_intermediate_size": 64,
            "num_experts": 8,
            "num_experts_per_tok": 2,
            "decoder_sparse_step": 1,
            "mlp_only_layers": [],
            "norm_topk_prob": True,
            "num_hidden_layers": 2,
            "head_dim": 16,
        },
        seed=2468,
    ),
}


def is_builtin(name: str) -> bool:
    return name in RECIPES


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on the shipped corpus; deterministic for a given corpus."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(CORPUS.read_text().splitlines(keepends=True), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        pad_token="<|pad|>",
        bos_token="<|bos|>",
        eos_token="<|im_end|>",
        additional_special_tokens=["<|eos|>", "<|im_start|>"],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def materialise(name: str, models_dir: Path) -> Path:
    """Build `name` under `models_dir/name` unless it is already there; safe across processes."""
    target = models_dir / name
    if (target / "config.json").exists():
        return target
    models_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(models_dir / f".{name}.lock")):
        if (target / "config.json").exists():
            return target
        _build(RECIPES[name], target)
    return target


def _build(recipe: TinyModelRecipe, target: Path) -> None:
    tokenizer = build_tokenizer()
    token_ids = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    config = recipe.make_config(token_ids, len(tokenizer))
    torch.manual_seed(recipe.seed)
    model = AutoModelForCausalLM.from_config(config)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    model.save_pretrained(tmp, safe_serialization=True)
    GenerationConfig(**token_ids).save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(target)
