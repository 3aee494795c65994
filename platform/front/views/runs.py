"""Training runs: the filtered, sorted, paged list, and one run's page (header, live metrics chart,
live operations and checkpoints, LoRA config)."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.shortcuts import render

from training.models import TrainingRun

from ..forms import TTL_CHOICES, RunFilterForm
from ..lookups import run_or_404
from ..runs import checkpoints_of, filtered, points_after, recent_operations, runs_of

RUNS_PER_PAGE = 25
MAX_COMPARED = 8  # one colour each


@login_required
def runs(request):
    base_models = sorted(set(TrainingRun.objects.filter(owner=request.user).values_list("base_model", flat=True)))
    form = RunFilterForm(request.GET, base_models)
    choice = form.cleaned_data if form.is_valid() else {}
    found = filtered(
        runs_of(request.user), choice.get("status", ""), choice.get("base_model", ""), choice.get("sort", "")
    )
    page = Paginator(found, RUNS_PER_PAGE).get_page(request.GET.get("page"))
    query = request.GET.copy()
    query.pop("page", None)
    context = {
        "form": form,
        "page": page,
        "has_any_run": bool(base_models),
        "query": query.urlencode(),
        "server_url": request.build_absolute_uri("/").rstrip("/"),
    }
    return render(request, "front/runs.html", context)


@login_required
def run(request, run_id: str):
    found = run_or_404(request.user, run_id)
    annotated = runs_of(request.user).get(pk=found.pk)
    points = points_after(found.id, 0)
    context = {
        "run": annotated,
        "lora_config": found.lora_config(),
        "operations": recent_operations(found),
        "checkpoints": checkpoints_of(found),
        "ttl_choices": TTL_CHOICES,
        "actions": True,
        "metrics": {"model_id": found.id, "points": points},
        "latest": _latest_values(points),
    }
    return render(request, "front/run.html", context)


def _latest_values(points: list[list]) -> list[tuple[str, int, float | None]]:
    """Each metric's last (name, step, value), by name: the chart's text equivalent."""
    latest = {name: (name, step, value) for _, step, name, value in points}
    return [latest[name] for name in sorted(latest)]


@login_required
def compare(request):
    """`/runs/compare/?run=A&run=B…`: each metric of the chosen runs overlaid, one colour per run;
    a run that is not the user's is a 404, as its own page is."""
    run_ids = list(dict.fromkeys(request.GET.getlist("run")))[:MAX_COMPARED]
    for run_id in run_ids:
        run_or_404(request.user, run_id)
    annotated = {run.id: run for run in runs_of(request.user).filter(pk__in=run_ids)}
    runs = [annotated[run_id] for run_id in run_ids]
    series = [
        {"model_id": run.id, "label": run.session.display_name or run.id, "points": points_after(run.id, 0)}
        for run in runs
    ]
    has_points = any(s["points"] for s in series)
    context = {"runs": runs, "series": series, "has_points": has_points, "max_compared": MAX_COMPARED}
    return render(request, "front/compare.html", context)
