"""Usage: what each finished operation consumed, and one user's totals per run, per API key and
per day. Reads and writes models only.

`record` is called as an operation's result is stored, in the same transaction, so an operation
is counted exactly once (a `UsageRecord` names its operation, one-to-one) and never recomputed
from logs. What counts:

- `forward_backward`: the tokens of every datum's `model_input` are `tokens_trained`, or
  `tokens_forward` for a forward-only pass;
- `sample`: the tokens generated, over all returned sequences, are `tokens_sampled`;
- `optim_step`: one optimizer step.

Other operations (creating a model, saves, loads) consume no tokens and leave no record.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import date, timedelta

from django.db.models import QuerySet, Sum
from django.utils import timezone

from .models import Operation, UsageRecord

COUNTS = ("tokens_trained", "tokens_forward", "tokens_sampled", "optimizer_steps")
MAX_DAYS = 366


@dataclass(frozen=True)
class Counts:
    tokens_trained: int = 0
    tokens_forward: int = 0
    tokens_sampled: int = 0
    optimizer_steps: int = 0

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def consumed(op: Operation, result: dict) -> Counts:
    """What `op` consumed, given the result it finished with."""
    if op.kind == "forward_backward":
        tokens = sum(_input_length(datum["model_input"]) for datum in op.payload["data"])
        return Counts(tokens_forward=tokens) if op.payload.get("forward_only") else Counts(tokens_trained=tokens)
    if op.kind == "optim_step":
        return Counts(optimizer_steps=1)
    if op.kind == "sample":
        return Counts(tokens_sampled=sum(len(sequence["tokens"]) for sequence in result["sequences"]))
    return Counts()


def _input_length(model_input: dict) -> int:
    return sum(len(chunk["tokens"]) for chunk in model_input["chunks"])


def record(op: Operation, result: dict) -> UsageRecord | None:
    """Store what `op` consumed (nothing for operations that consume no tokens)."""
    counts = consumed(op, result)
    if counts == Counts():
        return None
    return UsageRecord.objects.create(
        operation=op,
        owner_id=op.owner_id,
        api_key_id=op.api_key_id,
        training_run_id=op.training_run_id or _sampled_run_id(op),
        base_model=op.base_model,
        day=timezone.now().date(),  # UTC: TIME_ZONE is UTC
        **counts.to_dict(),
    )


def _sampled_run_id(op: Operation) -> str | None:
    """The run a sample is charged to: the one whose checkpoint its sampler reads, when the sampler's
    owner owns that run."""
    sampler = op.sampling_session
    return sampler.source_run_id if sampler is not None else None


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
