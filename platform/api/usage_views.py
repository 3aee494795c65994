"""GET /api/v1/usage: the key owner's usage over the last `days` days (default 30), in total, per
day, per training run and per API key, as recorded when operations finished (`training.usage`)."""

from __future__ import annotations

from rest_framework.decorators import api_view
from rest_framework.response import Response

from training import usage
from training.errors import BadRequest

from . import schema


def window_days(value: str | None, default: int = 30) -> int:
    try:
        days = int(value) if value is not None else default
    except ValueError:
        raise BadRequest("days must be an integer", field="days") from None
    if not 1 <= days <= usage.MAX_DAYS:
        raise BadRequest(f"days must be 1-{usage.MAX_DAYS}", field="days")
    return days


@schema.free_form("The key owner's tokens trained, forward-only and sampled, and optimizer steps")
@api_view(["GET"])
def usage_summary(request):
    first_day = usage.since(window_days(request.query_params.get("days")))
    records = usage.records_of(request.user, first_day)
    days = usage.per_day(records, first_day)
    return Response(
        {
            "first_day": first_day.isoformat(),
            "last_day": days[-1]["day"].isoformat(),
            "totals": usage.totals(records).to_dict(),
            "per_day": [{**row, "day": row["day"].isoformat()} for row in days],
            "per_run": usage.per_run(records),
            "per_api_key": usage.per_key(records),
        }
    )
