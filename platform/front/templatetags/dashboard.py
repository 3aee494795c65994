"""Template filters of the dashboard: checkpoint action URLs, short durations."""

from __future__ import annotations

from datetime import datetime

from django import template
from django.urls import reverse

from training.models import Checkpoint

from ..lookups import checkpoint_args

register = template.Library()


@register.filter
def checkpoint_url(checkpoint: Checkpoint, action: str) -> str:
    """`{{ checkpoint|checkpoint_url:"delete" }}`: the URL of one action on one checkpoint."""
    return reverse(f"front:checkpoint_{action}", args=checkpoint_args(checkpoint))


@register.simple_tag
def elapsed(start: datetime | None, end: datetime | None) -> str:
    """`{% elapsed op.created_at op.started_at %}`: "1.2 s", "3 min 4 s", or "—" if either is unknown."""
    if start is None or end is None:
        return "—"
    seconds = max((end - start).total_seconds(), 0.0)
    if seconds < 60:
        return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"
    minutes, rest = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {rest} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


@register.filter
def metric(value: float | None) -> str:
    """A metric value in 4 significant digits; "—" when there is none."""
    return "—" if value is None else f"{value:.4g}"
