"""Whether the engine can serve a base model, known from its config alone (no weights loaded), so the
platform refuses an unsupported architecture at the door instead of a runner failing later."""

from __future__ import annotations

import functools

import torch
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from .errors import EngineInputError
from .lora_layer import Routing, wrap_model


@functools.cache
def base_model_refusal(model_dir: str) -> str | None:
    """Why the engine cannot serve this model (naming the architecture and what is missing), or None.
    Builds the model on the meta device, exactly as the engine would wrap it."""
    config = AutoConfig.from_pretrained(model_dir)
    arch = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(config.model_type) or (config.architectures or [config.model_type])[0]
    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    except ValueError as error:
        if "scaled_dot_product_attention" in str(error):
            return (
                f"{arch}: transformers has no SDPA attention for this architecture, which the engine's "
                "packed passes need"
            )
        raise
    try:
        wrap_model(model, Routing())
    except EngineInputError as error:
        return str(error)
    return None
