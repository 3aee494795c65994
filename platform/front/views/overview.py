"""The overview: queues per base model with their waits, the runners and what they hold, the
viewer's active runs with their runner and snapshot, and the viewer's recent failures
(`front.overview`)."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.shortcuts import render

from .. import overview


@login_required
def overview_page(request):
    context = {
        "queues": overview.queues(request.user),
        "runners": overview.runners(request.user),
        "active_runs": overview.active_runs(request.user),
        "failures": overview.recent_failures(request.user),
    }
    return render(request, "front/overview.html", context)
