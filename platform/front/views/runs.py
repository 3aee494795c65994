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
