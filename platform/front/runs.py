"""What the dashboard shows of training runs: a run's status (`TrainingRunQuerySet.with_status`),
its last loss, and the sorted, filtered list of one user's runs. Reads models only."""

from __future__ import annotations

import math

from django.db.models import F, OuterRef, Q, QuerySet, Subquery
from django.template.loader import render_to_string

from training.models import Checkpoint, MetricPoint, Operation, TrainingRun
from training.run_metrics import PER_TOKEN_LOSS

STATUSES = [(status, status.capitalize()) for status in TrainingRun.STATUSES]
SORTS = [
    ("-created_at", "Newest first"),
    ("created_at", "Oldest first"),
    ("-last_request_at", "Most recent request"),
    ("-step", "Most steps"),
    ("last_loss", "Lowest last loss (per token)"),
    ("base_model", "Base model"),
]


def runs_of(user) -> QuerySet[TrainingRun]:
    """`user`'s runs with `status` and `last_loss` (the last per-token loss: runs of different batch
    sizes compare, which `loss:sum` does not) annotated, in one query for a whole page."""
    last_loss = (
        MetricPoint.objects.filter(training_run=OuterRef("pk"), name=PER_TOKEN_LOSS).order_by("-id").values("value")[:1]
    )
    return (
        TrainingRun.objects.filter(owner=user)
        .with_status()
        .select_related("session")
        .annotate(last_loss=Subquery(last_loss))
    )


def filtered(runs: QuerySet[TrainingRun], status: str, base_model: str, sort: str) -> QuerySet[TrainingRun]:
    if status:
        runs = runs.filter(status=status)  # type: ignore[misc]  # an annotation, unseen by the stubs
    if base_model:
        runs = runs.filter(base_model=base_model)
    sort = sort or SORTS[0][0]
    if sort == "last_loss":  # runs without a loss yet go last
        return runs.order_by(F("last_loss").asc(nulls_last=True), "-created_at")
    return runs.order_by(sort, "-created_at")


def finite(value: float) -> float | None:
    """JSON has no NaN or Infinity: a diverged metric is drawn as a gap."""
    return value if math.isfinite(value) else None


def points_after(run_id: str, after_id: int, limit: int | None = None) -> list[list]:
    """The run's metric points with ids above `after_id`, oldest first, as [id, step, name, value]."""
    rows = (
        MetricPoint.objects.filter(training_run_id=run_id, id__gt=after_id)
        .order_by("id")
        .values_list("id", "step", "name", "value")
    )
    if limit is not None:
        rows = rows[:limit]
    return [[point_id, step, name, finite(value)] for point_id, step, name, value in rows]


RECENT_OPERATIONS = 50


def recent_operations(run: TrainingRun, limit: int = RECENT_OPERATIONS) -> QuerySet[Operation]:
    """The run's newest operations, its own and the samples of samplers on its weights (an RL
    loop's), newest first."""
    mine = Q(training_run=run) | Q(sampling_session__source_run=run)
    return Operation.objects.filter(mine).order_by("-created_at", "-seq_id")[:limit]


def checkpoints_of(run: TrainingRun) -> QuerySet[Checkpoint]:
    return run.checkpoints.unexpired().order_by("-created_at")


def activity_html(run: TrainingRun, csrf_token: str, ttl_choices: list[tuple[str, str]]) -> str:
    """The run page's operations and checkpoints tables, as the page shows them and as the
    dashboard socket pushes them while the run works (`csrf_token` and the expiry choices for the
    checkpoints' forms)."""
    context = {
        "run": run,
        "operations": list(recent_operations(run)),
        "checkpoints": list(checkpoints_of(run)),
        "ttl_choices": ttl_choices,
        "actions": True,
        "csrf_token": csrf_token,
    }
    return render_to_string("front/run_activity.html", context)
