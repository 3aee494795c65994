"""Usage: tokens trained, forward-only and sampled, and optimizer steps, per day (a chart and a
table), per run and per API key, over a chosen period; the numbers of GET /api/v1/usage."""

from __future__ import annotations

from urllib.parse import urlencode

from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.shortcuts import render

from training import usage

from ..forms import UsageWindowForm

RUNS_PER_PAGE = 50


@login_required
def usage_page(request):
    form = UsageWindowForm(request.GET if "days" in request.GET else None)  # unbound: shows the default
    days = (form.cleaned_data.get("days") if form.is_valid() else None) or 30
    first_day = usage.since(days)
    records = usage.records_of(request.user, first_day)
    per_day = usage.per_day(records, first_day)
    context = {
        "form": form,
        "days": days,
        "totals": usage.totals(records),
        "per_day": per_day,
        "used_days": [row for row in per_day if any(row[name] for name in usage.COUNTS)],
        "page": Paginator(usage.per_run(records), RUNS_PER_PAGE).get_page(request.GET.get("page")),
        "query": urlencode({"days": days}),
        "per_key": usage.per_key(records),
        "chart": {
            "days": [row["day"].isoformat() for row in per_day],
            "series": {name: [row[name] for row in per_day] for name in usage.COUNTS},
        },
        "has_any_usage": usage.records_of(request.user).exists(),
    }
    return render(request, "front/usage.html", context)
