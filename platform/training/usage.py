"""Usage: one user's totals per run, per API key and per day, read from the `UsageRecord`s that
`UsageRecord.record` writes as each operation finishes (`costs.consumed` says what counts)."""

from __future__ import annotations

from datetime import date, timedelta

from django.db.models import QuerySet, Sum
from django.utils import timezone

from .costs import COUNTS, Counts
from .models import UsageRecord

MAX_DAYS = 366


# ---- one user's usage -----------------------------------------------------------------------


def since(days: int) -> date:
    """The first day of a window of `days` days ending today (UTC)."""
    return timezone.now().date() - timedelta(days=days - 1)


def records_of(user, first_day: date | None = None) -> QuerySet[UsageRecord]:
    found = UsageRecord.objects.filter(owner=user)
    return found.filter(day__gte=first_day) if first_day is not None else found


def _sums(rows: QuerySet[UsageRecord], *group: str) -> list[dict]:
    return list(rows.values(*group).annotate(**{name: Sum(name) for name in COUNTS}).order_by(*group))


def totals(records: QuerySet[UsageRecord]) -> Counts:
    sums = records.aggregate(**{name: Sum(name) for name in COUNTS})
    return Counts(**{name: sums[name] or 0 for name in COUNTS})


def per_day(records: QuerySet[UsageRecord], first_day: date, last_day: date | None = None) -> list[dict]:
    """Every day from `first_day` to `last_day` (today), days without usage as zeros: {day, counts...}."""
    by_day = {row.pop("day"): row for row in _sums(records, "day")}
    last_day = last_day or timezone.now().date()
    days = [first_day + timedelta(days=i) for i in range((last_day - first_day).days + 1)]
    return [{"day": day, **by_day.get(day, Counts().to_dict())} for day in days]


def per_run(records: QuerySet[UsageRecord]) -> list[dict]:
    """{run_id, base_model, counts...} per training run, most tokens trained first; sampling from one
    of the user's own checkpoints counts for its run; the bare base model or another user's
    published checkpoint has no run of theirs and is counted under run_id None."""
    rows = _sums(records, "training_run_id", "base_model")
    rows.sort(key=lambda row: (-row["tokens_trained"], -row["tokens_sampled"], row["training_run_id"] or ""))
    return [{"run_id": row.pop("training_run_id"), **row} for row in rows]


def per_key(records: QuerySet[UsageRecord]) -> list[dict]:
    """{key_prefix, key_name, revoked, counts...} per API key, by prefix; requests made without a
    key (none so far: every API request has one) would be under key_prefix None."""
    rows = _sums(records, "api_key__prefix", "api_key__name", "api_key__revoked_at")
    return [
        {
            "key_prefix": row.pop("api_key__prefix"),
            "key_name": row.pop("api_key__name") or "",
            "revoked": row.pop("api_key__revoked_at") is not None,
            **row,
        }
        for row in rows
    ]
