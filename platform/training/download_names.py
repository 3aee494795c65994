"""What a downloaded checkpoint archive is called: the run and the checkpoint, so that archives of
different runs saved under the same name (`final`, `step-000080`) do not overwrite each other in a
Downloads folder: `<run display name>-<short run id>-<checkpoint>.tar`, or without the display name
when the run has none; a PEFT export (external weights) ends in `-peft.tar`."""

from __future__ import annotations

import re

from .models import Checkpoint, TrainingRun

UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
MAX_PART = 60


def short_run_id(run: TrainingRun) -> str:
    """The first 8 characters of the run's session id, then its index in the session if not 0."""
    session, _, index = run.id.partition(":train:")
    short = session.replace("-", "")[:8]
    return short if index in ("", "0") else f"{short}-{index}"


def _part(text: str) -> str:
    return UNSAFE.sub("-", text).strip("-.")[:MAX_PART]


def archive_name(checkpoint: Checkpoint) -> str:
    run = checkpoint.training_run
    label = _part(run.session.display_name) if run.session.display_name else ""
    parts = [label, short_run_id(run), _part(checkpoint.name)]
    suffix = "-peft" if checkpoint.checkpoint_type == Checkpoint.Type.EXTERNAL else ""
    return "-".join(p for p in parts if p) + f"{suffix}.tar"
