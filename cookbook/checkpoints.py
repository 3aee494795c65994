"""A run's checkpoints, recorded in `checkpoints.jsonl` in its log directory so it can resume.

Each record is `{"step", "state_path", "sampler_path"}`: the training state (weights and optimizer,
for `create_training_client_from_state_with_optimizer`) and sampler weights of the same step.
The latest metrics go into the checkpoints' `user_metadata`, where the server keeps them.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import lorasmith
from lorasmith.types import SaveWeightsResponse

from .cli import as_metadata

FILE = "checkpoints.jsonl"


@dataclass(frozen=True)
class Checkpoint:
    step: int
    state_path: str
    sampler_path: str


@dataclass
class PendingCheckpoint:
    step: int
    state: lorasmith.APIFuture[SaveWeightsResponse]
    sampler: lorasmith.APIFuture[SaveWeightsResponse]

    def record(self, log_dir: Path) -> Checkpoint:
        """Wait for both saves and append them to the run's record."""
        checkpoint = Checkpoint(self.step, self.state.result().path, self.sampler.result().path)
        with open(log_dir / FILE, "a", encoding="utf-8") as records:
            records.write(json.dumps(asdict(checkpoint)) + "\n")
        return checkpoint


def submit_checkpoint(training: lorasmith.TrainingClient, step: int, metadata: dict[str, Any]) -> PendingCheckpoint:
    """Queue saving state and sampler weights named `step-<step>`, `metadata` stored with them."""
    name = f"step-{step:06d}"
    user_metadata = as_metadata({"step": step, **metadata})
    return PendingCheckpoint(
        step,
        training.save_state(name, user_metadata=user_metadata),
        training.save_weights_for_sampler(name, user_metadata=user_metadata),
    )


def last_checkpoint(log_dir: Path) -> Checkpoint | None:
    """The latest recorded checkpoint of the run in `log_dir`, if any."""
    path = log_dir / FILE
    if not path.exists():
        return None
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return Checkpoint(**max(records, key=lambda r: r["step"])) if records else None
