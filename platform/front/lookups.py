"""The dashboard's way to `training.access` (the one place that decides who sees what): another
user's run or checkpoint is a 404 page here, as it is a 404 in the API."""

from __future__ import annotations

from django.http import Http404

from training import access
from training.errors import NotFound
from training.models import Checkpoint, TrainingRun


def run_or_404(user, run_id: str) -> TrainingRun:
    try:
        return access.training_run_of(user, run_id)
    except NotFound as error:
        raise Http404(error.message) from None


def checkpoint_or_404(user, run_id: str, segment: str, name: str) -> Checkpoint:
    """One of `user`'s own unexpired checkpoints (published ones of others are not theirs to change)."""
    try:
        return access.owned_checkpoint(user, run_id, f"{segment}/{name}")
    except NotFound as error:
        raise Http404(error.message) from None


def downloadable_or_404(user, run_id: str, segment: str, name: str) -> Checkpoint:
    """A checkpoint `user` may download (theirs or published); BadRequest for training checkpoints."""
    try:
        return access.downloadable_checkpoint(user, run_id, f"{segment}/{name}")
    except NotFound as error:
        raise Http404(error.message) from None


def checkpoint_args(checkpoint: Checkpoint) -> list[str]:
    """The URL arguments that name `checkpoint`: its run, then its `<segment>/<name>` id in two parts."""
    return [checkpoint.training_run_id, *checkpoint.checkpoint_id.split("/", 1)]


def sampleable_or_404(user, run_id: str, segment: str, name: str) -> Checkpoint:
    """A checkpoint `user` may sample from (theirs or published) with weights for a sampler; an
    external (PEFT download) checkpoint is not one."""
    try:
        checkpoint = access.readable_checkpoint(user, run_id, f"{segment}/{name}")
    except NotFound as error:
        raise Http404(error.message) from None
    if checkpoint.checkpoint_type == Checkpoint.Type.EXTERNAL:
        raise Http404("external checkpoints are for download; sample from a sampler checkpoint")
    return checkpoint
