"""Template filters of the dashboard: checkpoint action URLs, short durations, metric values."""

from __future__ import annotations

from datetime import datetime

from django import template
from django.urls import reverse
from django.utils import timezone

from training.models import Checkpoint

from ..forms import TTL_CHOICES
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
    return seconds((end - start).total_seconds())


@register.filter
def seconds(value: float | None) -> str:
    """A duration in seconds as "1.2 s", "3 min 4 s" or "2 h 5 min"; "—" when there is none."""
    if value is None:
        return "—"
    value = max(value, 0.0)
    if value < 60:
        return f"{value:.1f} s" if value < 10 else f"{value:.0f} s"
    minutes, rest = divmod(int(value), 60)
    if minutes < 60:
        return f"{minutes} min {rest} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


@register.filter
def metric(value: float | None) -> str:
    """A metric value in 4 significant digits; "—" when there is none."""
    return "—" if value is None else f"{value:.4g}"


@register.filter
def ttl_choice(checkpoint: Checkpoint) -> str:
    """The expiry option that matches `checkpoint` now, so the selector shows its current value: ""
    (keep forever) without an expiry, else the shortest offered duration that covers the time left
    (a checkpoint set to "7 days" shows "7 days" until it expires)."""
    if checkpoint.expires_at is None:
        return ""
    left = (checkpoint.expires_at - timezone.now()).total_seconds()
    offered = sorted(int(value) for value, _ in TTL_CHOICES if value)
    return str(next((value for value in offered if value >= left), offered[-1]))
