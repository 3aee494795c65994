"""A loop's own metrics (held-out NLL, rewards) posted to its run join the run's chart data;
bad names, values and steps are 400 naming the field, and another user's run is 404."""

from __future__ import annotations

import pytest

from accounts.services import ensure_user
from front.runs import points_after
from training.models import MetricPoint


@pytest.fixture
def run(api):
    session = api.session()
    return api.create_model(session).json()["model_id"]


def test_posted_metrics_are_stored_and_charted(api, run):
    answer = api.post(f"training_runs/{run}/metrics", {"step": 3, "metrics": {"heldout/nll": 2.5, "reward:mean": 1}})
    assert answer == {"recorded": 2}
    api.post(f"training_runs/{run}/metrics", {"step": 4, "metrics": {"heldout/nll": 2.25}})
    stored = sorted(MetricPoint.objects.filter(training_run_id=run).values_list("step", "name", "value"))
    assert stored == [(3, "heldout/nll", 2.5), (3, "reward:mean", 1.0), (4, "heldout/nll", 2.25)]
    assert sorted((step, name, value) for _, step, name, value in points_after(run, 0)) == stored


@pytest.mark.parametrize(
    "body,field",
    [
        ({"metrics": {"a": 1.0}}, "step"),
        ({"step": -1, "metrics": {"a": 1.0}}, "step"),
        ({"step": "3", "metrics": {"a": 1.0}}, "step"),
        ({"step": 1}, "metrics"),
        ({"step": 1, "metrics": {}}, "metrics"),
        ({"step": 1, "metrics": {f"m{i}": 1.0 for i in range(65)}}, "metrics"),
        ({"step": 1, "metrics": {"has space": 1.0}}, "metrics"),
        ({"step": 1, "metrics": {"x" * 101: 1.0}}, "metrics"),
        ({"step": 1, "metrics": {"a": "high"}}, "metrics.a"),
        ({"step": 1, "metrics": {"a": True}}, "metrics.a"),
    ],
)
def test_bad_posts_are_400_naming_the_field_and_store_nothing(api, run, body, field):
    error = api.post(f"training_runs/{run}/metrics", body, expect=400)
    assert error["field"].startswith(field) and error["error"]
    assert not MetricPoint.objects.filter(training_run_id=run).exists()


def test_another_users_run_is_404(api_for, run):
    bob = api_for(ensure_user("bob"))
    error = bob.post(f"training_runs/{run}/metrics", {"step": 1, "metrics": {"a": 1.0}}, expect=404)
    assert error["error"]
    assert not MetricPoint.objects.filter(training_run_id=run).exists()
