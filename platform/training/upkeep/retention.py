"""Freeing checkpoint disk: a checkpoint removed by its owner (DELETE) or past its TTL goes with
its files; ephemeral sampler snapshots (save_weights_and_get_sampling_client, one per call, so an
RL loop makes hundreds) are kept only while recent or in use.

Access already treats an expired checkpoint as gone (`Checkpoint.objects.unexpired`); the purge frees its disk.
Runners purge between cycles (`housekeeping`); `manage.py purge_checkpoints` does it from cron.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

from django.utils import timezone

from .. import storage
from ..models import Checkpoint, Operation, SamplingSession, Session

log = logging.getLogger(__name__)


def delete_checkpoint(checkpoint: Checkpoint) -> None:
    location = checkpoint.directory
    checkpoint.delete()
    storage.remove_checkpoint_files(location)


def purge_expired() -> int:
    """Delete every checkpoint past its TTL; returns how many."""
    expired = list(Checkpoint.objects.filter(expires_at__lt=timezone.now()))
    for checkpoint in expired:
        delete_checkpoint(checkpoint)
    if expired:
        log.info("purged %d expired checkpoints", len(expired))
    return len(expired)


def release_ephemeral_weights(run_root: Path, keep: int) -> int:
    """Delete all but the newest `keep` ephemeral snapshots of one training run (the `seq-N`
    directories under `run_root`), sparing any a pending sample still needs; their sampling
    sessions are marked released, so sampling them is refused clearly. Returns how many went."""
    seqs = [(Path(d).name[4:], d) for d in storage.subdirectories(run_root) if Path(d).name.startswith("seq-")]
    snapshots = sorted(((int(n), d) for n, d in seqs if n.isdigit()), reverse=True)
    old = [d for _, d in snapshots[keep:]]
    if not old:
        return 0
    in_use = set(
        Operation.objects.pending()
        .filter(sampling_session__weights_dir__in=old)
        .values_list("sampling_session__weights_dir", flat=True)
    )
    doomed = [d for d in old if d not in in_use]
    SamplingSession.objects.filter(weights_dir__in=doomed, released_at__isnull=True).update(released_at=timezone.now())
    for directory in doomed:
        storage.remove_tree(directory)
    return len(doomed)


def release_finished_sessions_weights() -> int:
    """All ephemeral snapshots of finished sessions (named checkpoints stay until their TTL)."""
    directories = set(
        SamplingSession.objects.filter(released_at__isnull=True, model_path="")
        .exclude(weights_dir="")
        .exclude(session__finished_reason="")
        .values_list("weights_dir", flat=True)
    )
    released = sum(release_ephemeral_weights(root, keep=0) for root in {Path(d).parent for d in directories})
    vanished = [d for d in directories if not storage.is_kept(d)]  # e.g. a snapshot an older release took
    SamplingSession.objects.filter(weights_dir__in=vanished, released_at__isnull=True).update(
        released_at=timezone.now()
    )
    if released:
        log.info("released %d ephemeral sampler snapshots of finished sessions", released)
    return released


def idle_adapter_ids(adapter_ids: Iterable[str]) -> set[str]:
    """Of an engine's adapters (training run and sampler ids), those of finished sessions and of
    released samplers, unless work is still pending for them (an expired session's accepted
    training still runs)."""
    ids = set(adapter_ids)
    finished = set(
        Session.objects.filter(id__in={Session.id_within(i) for i in ids})
        .exclude(finished_reason="")
        .values_list("id", flat=True)
    )
    released = set(SamplingSession.objects.filter(id__in=ids, released_at__isnull=False).values_list("id", flat=True))
    idle = {i for i in ids if Session.id_within(i) in finished or i in released}
    pending = Operation.objects.pending()
    busy = set(pending.filter(training_run_id__in=idle).values_list("training_run_id", flat=True)) | set(
        pending.filter(sampling_session_id__in=idle).values_list("sampling_session_id", flat=True)
    )
    return idle - busy
