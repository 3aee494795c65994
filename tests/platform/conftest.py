"""In-process fixtures for platform tests: the API through Django's test client, no server."""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Callable
from typing import Any

import pytest

from accounts.services import ensure_user, issue_api_key
from training import dispatch

from .wire import InProcess, Wire


@pytest.fixture
def api_for(db, monkeypatch) -> Callable[[Any], Wire]:
    """The API of a given user, in process. No cycles run (dispatch is a no-op), so accepted
    work stays queued for the test to inspect."""
    monkeypatch.setattr(dispatch, "dispatch", lambda base_model: None)
    return lambda user: Wire(InProcess(issue_api_key(user, "test")))


@pytest.fixture
def api(api_for) -> Wire:
    return api_for(ensure_user("api-user"))


@pytest.fixture
def queues(monkeypatch, settings) -> dict[str, deque]:
    """Cycles are sent nowhere: each runner's queue of (runner id, epoch, cycle id, op ids) is kept
    here, for the test to run with `cycle.execute_cycle` when it chooses (runners never go stale)."""
    settings.LORASMITH = dataclasses.replace(settings.LORASMITH, runner_dead_after_seconds=3600.0)
    sent: dict[str, deque] = {}
    monkeypatch.setattr(
        dispatch,
        "_send",
        lambda runner, cycle_id, op_ids: sent.setdefault(runner.queue, deque()).append(
            (runner.id, runner.epoch, cycle_id, op_ids)
        ),
    )
    return sent
