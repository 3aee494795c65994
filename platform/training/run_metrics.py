"""A training run's metric points, charted alike on its run page: the server's own (each optimizer
step's, written with its outcome) and the user's (what their loop measures — held-out NLL,
rewards — posted through the API, since only the client knows them)."""

from __future__ import annotations

import math
import re

from django.db import transaction

from gpu_runner.types import Datum

from . import access, events, wire
from .errors import BadRequest
from .models import MetricPoint, TrainingRun

MAX_NAMES_PER_POST = 64
LOSS_SUM = "loss:sum"  # what the engine reports of a forward_backward: comparable only at equal batch sizes
PER_TOKEN_LOSS = "loss:per_token"  # loss:sum / the sum of the batch's weights: comparable across runs
METRIC_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_./:-]{0,99}")  # fullmatch; fits MetricPoint.name


def record(run: TrainingRun, step: int, values: dict[str, float]) -> None:
    """Store the points and push them to the run's live chart once they are committed."""
    MetricPoint.objects.bulk_create(
        [MetricPoint(training_run=run, step=step, name=k, value=float(v)) for k, v in values.items()]
    )
    owner_id, run_id = run.owner_id, run.id
    transaction.on_commit(lambda: events.metrics(owner_id, run_id, step, values))


def record_user_metrics(user, run_id: str, body: dict) -> int:
    """`{"step": n, "metrics": {name: number}}` for `user`'s run; how many points were stored."""
    run = access.training_run_of(user, run_id)
    step = wire.require(body, "step", int)
    if step < 0:
        raise BadRequest("step must be >= 0", field="step")
    values = wire.require(body, "metrics", dict)
    if not 1 <= len(values) <= MAX_NAMES_PER_POST:
        raise BadRequest(f"metrics must hold 1 to {MAX_NAMES_PER_POST} names", field="metrics")
    for name, value in values.items():
        if not METRIC_NAME.fullmatch(name):
            raise BadRequest(
                f"metric name {name[:120]!r}: letters, digits and _ . / : -, at most 100 characters", field="metrics"
            )
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise BadRequest(f"metrics.{name} must be a finite number", field=f"metrics.{name}")
    with transaction.atomic():
        record(run, step, {name: float(value) for name, value in values.items()})
    return len(values)


def forward_backward_points(loss_fn: str, data: list[Datum], loss_sum: float) -> dict[str, float]:
    """The points a training forward_backward puts on its run's chart: `loss:sum`, and for
    cross_entropy the per-token loss, `loss:sum` / the sum of every datum's weights (a datum
    without weights weighs 1 per target token, as the engine counts it). Other losses (importance
    sampling, PPO, a custom loss's linear surrogate) have no per-token meaning and get none.
    `data`: the engine's data of the pass (already decoded by planning, not decoded again)."""
    points = {LOSS_SUM: loss_sum}
    if loss_fn != "cross_entropy":
        return points
    total = sum(_weight_sum(datum) for datum in data)
    if total > 0:
        points[PER_TOKEN_LOSS] = loss_sum / total
    return points


def _weight_sum(datum: Datum) -> float:
    weights = datum.loss_fn_inputs.get("weights")
    return float(weights.sum()) if weights is not None else float(datum.loss_fn_inputs["target_tokens"].numel())
