"""Block-diagonal masks for packed rows, for decoders that would not build them.

The engine packs sequences into rows with per-sequence `position_ids`, no `attention_mask` and no
cache; transformers' masking utilities then see the position resets and build block-diagonal causal
(and sliding-window) masks. Most decoders pass `position_ids` to them, but some build their mask
mapping without it (gpt-oss in transformers 5.25), which would let a packed row's sequences attend to
each other. For those, a forward pre-hook on the decoder builds the same mapping with `position_ids`
and hands it in as the prepared `attention_mask` dict the decoder already accepts.
"""

from __future__ import annotations

import inspect
import re
from typing import Any

import torch
from torch import nn
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

MASK_BUILDERS = {"full_attention": create_causal_mask, "sliding_attention": create_sliding_window_causal_mask}
_MAPPING = "isinstance(causal_mask_mapping := attention_mask, dict)"


def needs_packed_masks(decoder: nn.Module) -> bool:
    """Whether the decoder accepts a prepared mask mapping but builds its own without `position_ids`.
    Read from its forward's source: the mapping branch (up to its `causal_mask_mapping = {...}`) never
    names position_ids."""
    try:
        source = inspect.getsource(type(decoder).forward)
    except (OSError, TypeError):
        return False
    if _MAPPING not in source:
        return False
    branch = re.search(r"causal_mask_mapping := attention_mask.*?causal_mask_mapping = \{.*?\}", source, re.S)
    return branch is not None and "position_ids" not in branch.group(0)


def install(model: nn.Module) -> bool:
    """Hook the model's decoder when it needs packed masks and every layer type is one we can build;
    returns whether it did."""
    get_decoder = getattr(model, "get_decoder", None)
    decoder = get_decoder() if callable(get_decoder) else None
    if decoder is None or not needs_packed_masks(decoder):
        return False
    config = decoder.config
    layer_types = set(getattr(config, "layer_types", None) or ["full_attention"])
    if not layer_types <= set(MASK_BUILDERS):
        return False
    decoder.register_forward_pre_hook(_packed_mapping_hook(config, sorted(layer_types)), with_kwargs=True)
    return True


def _packed_mapping_hook(config: Any, layer_types: list[str]):
    def hook(module: nn.Module, args: tuple, kwargs: dict[str, Any]):
        position_ids = kwargs.get("position_ids")
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        if position_ids is None or kwargs.get("attention_mask") is not None or cache is not None:
            return None  # not a packed pass (sampling passes a mask and a cache)
        if kwargs.get("use_cache"):
            return None
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        embeds = kwargs.get("inputs_embeds")
        if embeds is None:
            # only its shape, dtype and device are read: a zero-stride stand-in for the embeddings
            dtype = next(module.parameters()).dtype
            embeds = torch.zeros((), dtype=dtype, device=input_ids.device).expand(*input_ids.shape, 1)
        mapping = {
            kind: MASK_BUILDERS[kind](
                config=config, inputs_embeds=embeds, attention_mask=None, cache=None, position_ids=position_ids
            )
            for kind in layer_types
        }
        return args, {**kwargs, "attention_mask": mapping}

    return hook
