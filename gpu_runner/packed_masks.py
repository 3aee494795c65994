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


def packed_mask_kinds(decoder: nn.Module) -> list[str] | None:
    """The mask kinds ("full_attention", "sliding_attention") the decoder's own mapping holds, when it
    accepts a prepared mapping but builds its own without `position_ids`; else None (nothing to do, or
    a kind this module cannot build). Read from its forward's source: the mapping branch, up to its
    `causal_mask_mapping = {...}`."""
    try:
        source = inspect.getsource(type(decoder).forward)
    except (OSError, TypeError):
        return None
    branch = re.search(r"causal_mask_mapping := attention_mask, dict.*?causal_mask_mapping = \{.*?\}", source, re.S)
    if branch is None or "position_ids" in branch.group(0):
        return None
    mapping = branch.group(0).rsplit("causal_mask_mapping = {", 1)[1]
    kinds = sorted(set(re.findall(r"\"(\w+)\":", mapping)))
    return kinds if kinds and set(kinds) <= set(MASK_BUILDERS) else None


def needs_packed_masks(decoder: nn.Module) -> bool:
    return packed_mask_kinds(decoder) is not None


def install(model: nn.Module) -> bool:
    """Hook the model's decoder when it needs packed masks; returns whether it did."""
    get_decoder = getattr(model, "get_decoder", None)
    decoder = get_decoder() if callable(get_decoder) else None
    kinds = packed_mask_kinds(decoder) if decoder is not None else None
    if decoder is None or kinds is None:
        return False
    decoder.register_forward_pre_hook(_packed_mapping_hook(decoder.config, kinds), with_kwargs=True)
    return True


def _packed_mapping_hook(config: Any, layer_types: list[str]):
    def hook(module: nn.Module, args: tuple, kwargs: dict[str, Any]):
        position_ids = kwargs.get("position_ids")
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        if position_ids is None or kwargs.get("attention_mask") is not None or cache is not None:
            return None  # not a packed pass (sampling passes a mask and a cache)
        if kwargs.get("use_cache") or position_ids.dim() != 2:
            return None
        input_ids: torch.Tensor | None = kwargs.get("input_ids", args[0] if args else None)
        embeds = kwargs.get("inputs_embeds")
        if embeds is None:
            if input_ids is None:
                return None
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
