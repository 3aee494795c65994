"""Lorasmith's engine: one frozen Hugging Face base model serving many LoRA adapters.

Pure PyTorch/transformers/peft; nothing here may import Django, DRF, Channels or Dramatiq.
"""

from .base_model import BaseModelInfo, describe_base_model
from .engine import Engine
from .validation import validate_forward_backward, validate_sample

__all__ = ["BaseModelInfo", "Engine", "describe_base_model", "validate_forward_backward", "validate_sample"]
