"""What the overview page shows: the work queued and running per base model with its queue wait
(every user's, as counts only), each runner's resident adapters and memory (naming only the
viewer's own runs and samplers), the viewer's active runs with the runner holding each (host,
device) and its latest snapshot, and the viewer's recent failures, each with where to look: its run,
or the playground page that shows the failed sample. Reads models only."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.db.models import Count, Max, Min, Q
from django.urls import reverse
from django.utils import timezone

from training import access, base_models, wire
from training.errors import ApiError
from training.models import Checkpoint, Operation, RunnerHeartbeat, SamplingSession, TrainingRun

RECENT_STARTS = 100  # the queue wait of the last this many started operations, per base model
RUNNER_SHOWN_FOR = timedelta(days=1)  # a runner not heard of for longer is left off
RUNNER_QUIET_AFTER = timedelta(minutes=10)  # ... and shown as quiet after this long without a report
RECENT_FAILURES = 20
ACTIVE_RUNS = 20  # the viewer's runs shown with their runner: not finished, most recent request first


def queues(user) -> list[dict]:
    """Per served base model (and any other with pending work): queued and running counts, the
    viewer's share, the oldest queued request's wait and the mean wait of recent starts (s)."""
    now = timezone.now()
    pending = (
        Operation.objects.pending()
        .values("base_model")
        .annotate(
            queued=Count("id", filter=Q(status=Operation.Status.QUEUED)),
            running=Count("id", filter=Q(status=Operation.Status.RUNNING)),
            mine=Count("id", filter=Q(owner=user)),
            oldest=Min("created_at", filter=Q(status=Operation.Status.QUEUED)),
        )
    )
    found: dict[str, dict[str, Any]] = {row["base_model"]: dict(row) for row in pending}
    rows = []
    for name in sorted(set(base_models.served_models()) | set(found)):
        row = found.get(name, {"queued": 0, "running": 0, "mine": 0, "oldest": None})
        oldest: datetime | None = row["oldest"]
        rows.append(
            {
                "base_model": name,
                "queued": row["queued"],
                "running": row["running"],
                "mine": row["mine"],
                "oldest_wait": (now - oldest).total_seconds() if oldest is not None else None,
                "recent_wait": _recent_wait(name),
            }
        )
    return rows


def _recent_wait(base_model: str) -> float | None:
    started = (
        Operation.objects.filter(base_model=base_model, started_at__isnull=False)
        .order_by("-started_at")
        .values_list("created_at", "started_at")[:RECENT_STARTS]
    )
    waits = [(start - created).total_seconds() for created, start in started if start is not None]
    return sum(waits) / len(waits) if waits else None


def runners(user) -> list[dict]:
    """Runners heard of in the last day, newest first, with the viewer's own resident adapters."""
    now = timezone.now()
    found = list(RunnerHeartbeat.objects.filter(updated_at__gte=now - RUNNER_SHOWN_FOR).order_by("-updated_at"))
    resident = {adapter for beat in found for adapter in beat.resident_adapters}
    own_runs = set(TrainingRun.objects.filter(owner=user, id__in=resident).values_list("id", flat=True))
    own_samplers = set(SamplingSession.objects.filter(owner=user, id__in=resident).values_list("id", flat=True))
    return [
        {
            "beat": beat,
            "resident": len(beat.resident_adapters),
            "own_runs": sorted(own_runs.intersection(beat.resident_adapters)),
            "own_samplers": sorted(own_samplers.intersection(beat.resident_adapters)),
            "age": (now - beat.updated_at).total_seconds(),
            "quiet": now - beat.updated_at > RUNNER_QUIET_AFTER,
        }
        for beat in found
    ]


def active_runs(user) -> list[TrainingRun]:
    """The viewer's unfinished runs, most recently used first, with `runner` and the snapshot's
    `latest_snapshot_seq` fetched in the same query."""
    return list(
        TrainingRun.objects.filter(owner=user, session__finished_reason="")
        .with_status()
        .select_related("session", "runner")
        .annotate(latest_snapshot_seq=Max("snapshots__seq_id"))
        .order_by("-last_request_at")[:ACTIVE_RUNS]
    )


def recent_failures(user) -> list[dict]:
    """The viewer's newest failed operations, each as {op, run, sample_url}: `run` is the run it
    belongs to (a sample's: the run whose checkpoint its sampler holds, if the viewer's), and
    `sample_url` the playground page showing a failed sample when its checkpoint can still be sampled."""
    failed = (
        Operation.objects.filter(owner=user, status=Operation.Status.FAILED)
        .select_related("training_run__session", "sampling_session__source_run__session")
        .order_by("-finished_at")[:RECENT_FAILURES]
    )
    return [{"op": op, "run": _run_of(op), "sample_url": _sample_url(user, op)} for op in failed]


def _run_of(op: Operation) -> TrainingRun | None:
    if op.training_run is not None:
        return op.training_run
    return op.sampling_session.source_run if op.sampling_session is not None else None


def _sample_url(user, op: Operation) -> str | None:
    sampler = op.sampling_session
    if sampler is None or not sampler.model_path:
        return None
    try:
        path = wire.parse_tinker_path(sampler.model_path, "model_path")
        checkpoint = access.readable_checkpoint(user, path.run_id, path.checkpoint_id)
    except ApiError:  # gone, or never a checkpoint the viewer may open
        return None
    if checkpoint.checkpoint_type == Checkpoint.Type.EXTERNAL:
        return None
    segment, name = checkpoint.checkpoint_id.split("/", 1)
    return f"{reverse('front:checkpoint_playground', args=[checkpoint.training_run_id, segment, name])}?request={op.id}"
