"""What a downloaded adapter says about its base model. The engine writes the directory it loaded
the base model from as `base_model_name_or_path` (a path on the server, of no use to whoever
downloads the adapter); the platform rewrites it to the name the server serves the model under
(the hub id, or the built-in's name), which is what a user passes to `from_pretrained`."""

from __future__ import annotations

import json
from pathlib import Path

PEFT_CONFIG = "adapter_config.json"


def name_served_base_model(directory: Path | str, served_name: str) -> None:
    """Set `base_model_name_or_path` of the PEFT adapter in `directory` to `served_name` (no-op for
    a checkpoint without a PEFT config, e.g. training state)."""
    config_path = Path(directory) / PEFT_CONFIG
    if not config_path.is_file():
        return
    config = json.loads(config_path.read_text())
    if config.get("base_model_name_or_path") == served_name:
        return
    config["base_model_name_or_path"] = served_name
    partial = config_path.with_name(f".{PEFT_CONFIG}.part")
    partial.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    partial.replace(config_path)
