"""The loss the dashboard shows and sorts by is per token: loss:sum, as the engine answers it,
divided by the sum of the batch's weights (1 per target token for a datum without weights)."""

from __future__ import annotations

import pytest

from tests.platform.wire import datum_json, tensor
from training.models import MetricPoint

WEIGHTED = [3, 320, 265, 203, 44]
WEIGHTS = [0.5, 1.0, 0.0, 2.0]
UNWEIGHTED = [3, 17, 99, 41, 7, 8]


def _points(model_id: str, name: str) -> list[float]:
    return list(
        MetricPoint.objects.filter(training_run_id=model_id, name=name).order_by("id").values_list("value", flat=True)
    )


def test_per_token_loss_is_the_sum_over_the_weights_sum(alice, api_of, runner):
    wire, _ = api_of(alice)
    model_id = wire.model(wire.session())
    plain = datum_json(UNWEIGHTED)
    del plain["loss_fn_inputs"]["weights"]  # weighs 1 per target token
    answer = wire.result(wire.forward_backward(model_id, 1, [datum_json(WEIGHTED, WEIGHTS), plain]))

    loss_sum = answer["metrics"]["loss:sum"]
    assert _points(model_id, "loss:sum") == [pytest.approx(loss_sum)]
    assert _points(model_id, "loss:per_token") == [pytest.approx(loss_sum / (sum(WEIGHTS) + len(UNWEIGHTED) - 1))]


def test_a_loss_without_per_token_meaning_gets_none(alice, api_of, runner):
    wire, _ = api_of(alice)
    model_id = wire.model(wire.session())
    n = len(WEIGHTED) - 1
    datum = datum_json(WEIGHTED)
    datum["loss_fn_inputs"] = {
        "target_tokens": tensor(WEIGHTED[1:], "int64"),
        "logprobs": tensor([-1.0] * n, "float32"),
        "advantages": tensor([1.0] * n, "float32"),
    }
    wire.result(wire.forward_backward(model_id, 1, [datum], loss_fn="importance_sampling"))
    assert len(_points(model_id, "loss:sum")) == 1 and _points(model_id, "loss:per_token") == []
