"""Per-user quotas: over one, a request is answered 429 with a Retry-After hint and a body naming
the quota, nothing is stored (so the same seq_id is accepted later), and work already accepted
stays. A request that fills a gap others wait on is never refused; a request bigger than the
whole byte quota is 413 (waiting would not help) and uses up its seq like any refusal."""

from __future__ import annotations

import dataclasses
import json

import pytest

from training.models import Operation

from .wire import TOKENS, Wire, datum_json

pytestmark = pytest.mark.django_db


def _quotas(settings, **limits) -> None:
    unlimited = {"max_active_runs": 0, "max_pending_operations": 0, "max_pending_bytes": 0}
    settings.LORASMITH = dataclasses.replace(settings.LORASMITH, **{**unlimited, **limits})


def _model(api: Wire, session: str, n: int = 0):
    return api.create_model(session, n, rank=4)


def _forward_backward(api: Wire, model_id: str, seq_id: int, data: list | None = None):
    return api.send("forward_backward", Wire.forward_backward_body(model_id, seq_id, data))


def _assert_limited(response, field: str, message: str) -> None:
    assert response.status_code == 429, response.content
    body = response.json()
    assert body["field"] == field and message in body["error"]
    assert int(response.headers["Retry-After"]) >= 1 and body["retry_after_seconds"] > 0


def test_pending_operations_quota_refuses_without_storing_and_accepts_the_retry(api, settings):
    _quotas(settings, max_pending_operations=3)
    model_id = f"{api.session()}:train:0"
    assert _model(api, model_id.split(":")[0]).status_code == 200  # seq 0 is pending too
    accepted = [_forward_backward(api, model_id, seq).json()["request_id"] for seq in (1, 2)]
    _assert_limited(_forward_backward(api, model_id, 3), "quota.pending_operations", "3 operations pending")
    assert not Operation.objects.filter(training_run_id=model_id, seq_id=3).exists()
    assert _forward_backward(api, model_id, 2).json()["request_id"] == accepted[1]  # a repeat is not new work
    Operation.objects.filter(id=accepted[0]).update(status=Operation.Status.DONE)
    retried = _forward_backward(api, model_id, 3)
    assert retried.status_code == 200
    assert Operation.objects.get(id=retried.json()["request_id"]).seq_id == 3
    assert Operation.objects.filter(id__in=accepted).count() == 2


def test_a_request_filling_a_gap_is_accepted_over_the_quota(api, settings):
    _quotas(settings, max_pending_operations=3)
    session = api.session()
    model_id = f"{session}:train:0"
    _model(api, session)
    for seq in (2, 3):  # early arrivals: they wait for seq 1
        assert _forward_backward(api, model_id, seq).status_code == 200
    assert _forward_backward(api, model_id, 1).status_code == 200
    _assert_limited(_forward_backward(api, model_id, 4), "quota.pending_operations", "the most allowed is 3")
    sampler = api.sampler(session)
    _assert_limited(
        api.send("asample", Wire.sample_body(sampler)),
        "quota.pending_operations",
        "retry when some have finished",
    )


def test_pending_bytes_quota_counts_stored_payloads(api, settings):
    one = len(json.dumps(datum_json(TOKENS), separators=(",", ":")))  # ~280 bytes; a request adds ~80 more
    _quotas(settings, max_pending_bytes=5 * one)
    session = api.session()
    model_id = f"{session}:train:0"
    _model(api, session)
    assert _forward_backward(api, model_id, 1, [datum_json(TOKENS)] * 3).status_code == 200
    _assert_limited(_forward_backward(api, model_id, 2, [datum_json(TOKENS)] * 3), "quota.pending_bytes", "over the")
    assert 3 * one < sum(Operation.objects.values_list("payload_bytes", flat=True)) <= 5 * one
    assert _forward_backward(api, model_id, 2, [datum_json(TOKENS)]).status_code == 200


def test_a_request_bigger_than_the_byte_quota_is_413_and_uses_up_its_seq(api, settings):
    _quotas(settings, max_pending_bytes=2000)
    session = api.session()
    model_id = f"{session}:train:0"
    _model(api, session)
    refused = _forward_backward(api, model_id, 1, [datum_json(TOKENS)] * 20)
    assert refused.status_code == 413 and refused.json()["field"] == "body"
    assert "split it into smaller requests" in refused.json()["error"] and refused.json()["consumed_seq_id"] == 1
    assert _forward_backward(api, model_id, 2).status_code == 200


def test_active_runs_quota_frees_up_when_a_session_finishes(api, settings):
    _quotas(settings, max_active_runs=1)
    session = api.session()
    first = _model(api, session)
    assert first.status_code == 200
    _assert_limited(_model(api, session, 1), "quota.active_runs", "1 active training runs")
    assert _model(api, session).json()["request_id"] == first.json()["request_id"]  # repeat of the create
    assert api.send(f"sessions/{session}/finish", {}).status_code == 200
    assert _model(api, api.session()).status_code == 200
