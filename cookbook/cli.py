"""Recipe configs: one dataclass per recipe, its fields turned into command-line flags.

`RunConfig` holds what every recipe shares (where the server is, which model, where logs go);
`parse_config` makes `--learning-rate 1e-3` of a field `learning_rate: float = 1e-3`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import lorasmith

C = TypeVar("C", bound="RunConfig")
DATA_DIR = Path(__file__).with_name("data")


@dataclasses.dataclass
class RunConfig:
    base_url: str | None = None  # default: LORASMITH_BASE_URL (or TINKER_BASE_URL)
    api_key: str | None = None  # default: LORASMITH_API_KEY (or TINKER_API_KEY)
    base_model: str = "tiny-llama"
    renderer: str = "role_colon"
    lora_rank: int = 16
    seed: int = 0
    log_dir: str = ""  # default: <tmp>/lorasmith-cookbook/<recipe>
    show_progress: bool = True


def log_dir_of(config: RunConfig, recipe: str) -> Path:
    """The run's log directory (created): `config.log_dir`, or one per recipe under the temp dir."""
    path = Path(config.log_dir or os.path.join(tempfile.gettempdir(), "lorasmith-cookbook", recipe))
    path.mkdir(parents=True, exist_ok=True)
    return path


def connect(config: RunConfig, recipe: str) -> lorasmith.ServiceClient:
    """A ServiceClient on the configured server; the session is named after the recipe."""
    return lorasmith.ServiceClient(
        base_url=config.base_url,
        api_key=config.api_key,
        display_name=f"cookbook.{recipe}",
        user_metadata={"recipe": recipe},
    )


def _flag_type(hint: Any) -> Any:
    options = [t for t in typing.get_args(hint) if t is not type(None)] or [hint]
    return options[0]


def parse_config(config_class: type[C], argv: Sequence[str] | None = None, description: str | None = None) -> C:
    """Parse `argv` (default: sys.argv) into `config_class`, one `--kebab-case` flag per field."""
    parser = argparse.ArgumentParser(description=description)
    hints = typing.get_type_hints(config_class)
    for field in dataclasses.fields(config_class):
        flag = "--" + field.name.replace("_", "-")
        kind = _flag_type(hints[field.name])
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=field.default)
        else:
            parser.add_argument(flag, type=kind, default=field.default, help=f"default: {field.default!r}")
    return config_class(**vars(parser.parse_args(argv)))


def run_metadata(config: RunConfig, recipe: str) -> dict[str, Any]:
    """The config as a training run's user_metadata: everything but the server's address and the key."""
    hidden = ("base_url", "api_key", "show_progress")
    return as_metadata({"recipe": recipe, **{k: v for k, v in dataclasses.asdict(config).items() if k not in hidden}})


def as_metadata(values: dict[str, Any]) -> dict[str, str]:
    """`user_metadata` maps strings to strings (Tinker's SDK reads nothing else back)."""
    return {key: str(value) for key, value in values.items()}


def main(config_class: type[C], run: Callable[[C], dict[str, Any]], recipe: str, description: str | None) -> None:
    """A recipe's command line: parse the flags, run, print the result and keep it as `result.json`
    in the log directory (where `metrics.jsonl` and `checkpoints.jsonl` are), for scripts to read."""
    config = parse_config(config_class, description=description)
    result = run(config)
    text = json.dumps(result, indent=2, default=str)
    (log_dir_of(config, recipe) / "result.json").write_text(text + "\n", encoding="utf-8")
    print(text)
