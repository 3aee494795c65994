"""Which base models this deployment serves, and what the door needs to know about each."""

from __future__ import annotations

import functools
import re

from django.conf import settings

from gpu_runner import BaseModelInfo, describe_base_model, tiny_models
from gpu_runner.support import base_model_refusal

from .errors import BadRequest


def served_models() -> list[str]:
    return list(settings.LORASMITH.base_models)


@functools.cache
def info(name: str) -> BaseModelInfo:
    return describe_base_model(name, settings.DATA_DIR)


def tokenizer_id(name: str) -> str:
    """What Tinker's SDK hands to AutoTokenizer.from_pretrained. The built-in tiny models are on no
    hub: their local directory lets a client on this machine load the tokenizer offline. Any other
    model is named as served (a hub id, which a remote client can resolve)."""
    return info(name).model_dir if tiny_models.is_builtin(name) else name


def served_info(name: str, field: str = "base_model") -> BaseModelInfo:
    if name not in served_models():
        raise BadRequest(f"{field} {name!r} is not served here; available: {served_models()}", field=field)
    found = info(name)
    refusal = base_model_refusal(found.model_dir)  # an architecture the engine cannot wrap: a 400, not a runner failure
    if refusal is not None:
        raise BadRequest(f"{field} {name!r} cannot be trained here: {refusal}", field=field)
    return found


def queue_name(base_model: str) -> str:
    """One Dramatiq queue per base model, so runner machines can each take their own."""
    return settings.LORASMITH.queue_prefix + "runner." + re.sub(r"[^A-Za-z0-9._-]", "_", base_model)
