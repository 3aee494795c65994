"""Random-weight models with real shapes, built from their configs (no download), for benchmarks.

`build(name, directory)` writes an ordinary Hugging Face directory (config, safetensors, a tokenizer
borrowed from the built-in tiny models with the vocabulary padded to the config's) so the engine loads
it through the same path as a hub model. `flops_per_token` gives the training FLOPs used for MFU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedConfig, Qwen3Config

from gpu_runner.tiny_models import build_tokenizer

# the shapes of published configs (sizes only; weights are random)
SHAPES: dict[str, tuple[type[PreTrainedConfig], dict[str, Any]]] = {
    "llama-3.1-8b": (
        LlamaConfig,
        dict(
            hidden_size=4096,
            intermediate_size=14336,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=8,
            vocab_size=128256,
            max_position_embeddings=8192,
            rope_theta=500000.0,
            tie_word_embeddings=False,
        ),
    ),
    "llama-34m": (  # the CPU benchmark's "~34M-parameter Llama"
        LlamaConfig,
        dict(
            hidden_size=512,
            intermediate_size=1376,
            num_hidden_layers=8,
            num_attention_heads=8,
            num_key_value_heads=8,
            vocab_size=8192,
            max_position_embeddings=2048,
            tie_word_embeddings=False,
        ),
    ),
    "qwen3-vocab-tiny": (  # Qwen3's 151,936-token vocabulary on a tiny body: the logprobs' memory
        Qwen3Config,
        dict(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=32,
            vocab_size=151936,
            max_position_embeddings=4096,
            tie_word_embeddings=False,
        ),
    ),
}


def build(name: str, directory: Path, dtype: torch.dtype = torch.float32, device: torch.device | None = None) -> Path:
    """Write the random model `name` to `directory` (once); returns the directory. Initialising on
    the GPU (`device`) takes seconds where an 8B model takes minutes on a CPU."""
    if (directory / "config.json").exists():
        return directory
    config_class, sizes = SHAPES[name]
    tokenizer = build_tokenizer()
    config = config_class(
        **sizes,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    with torch.device(device or "cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return directory


def flops_per_token(config: PreTrainedConfig, context: int, lora_fraction: float = 0.0) -> float:
    """Training FLOPs per token as the issue defines MFU: 4·N for a LoRA step (forward 2N, backward
    through activations 2N, no weight gradients of the frozen base), plus attention (causal: half
    of 4·L·T·d forward, twice that backward), with N the non-embedding parameters."""
    hidden, layers = config.hidden_size, config.num_hidden_layers
    heads, kv = config.num_attention_heads, getattr(config, "num_key_value_heads", config.num_attention_heads)
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    mlp = config.intermediate_size
    attention_params = hidden * head_dim * (heads + 2 * kv) + heads * head_dim * hidden
    per_layer = attention_params + 3 * hidden * mlp
    n = layers * per_layer + hidden * config.vocab_size  # the head is a matmul; the input embedding is a lookup
    attention = 3 * 2 * layers * context * heads * head_dim  # QK^T and AV, causal half, forward + 2x backward
    return 4 * n * (1 + lora_fraction) + attention
