"""Faults and counters that tests switch on with LORASMITH_TEST_HOOKS=1; off in production, where
every function here is a no-op. The production path calls only these, so what a test can make
the service do is listed in one place."""

from __future__ import annotations

from django.conf import settings

_counters = {"retrieve_future": 0}


def enabled() -> bool:
    return settings.LORASMITH.test_hooks


def fail_before_forward_backward(user_metadata: dict) -> None:
    """A run whose user_metadata has `force_runner_failure` fails each forward_backward as the
    runner would on an internal error."""
    if enabled() and user_metadata.get("force_runner_failure"):
        raise RuntimeError("forced runner failure (test hook)")


def fail_after_cycle(runs_and_seqs: list[tuple[dict, int]]) -> None:
    """A run whose user_metadata names `force_cycle_failure_seq` makes the cycle holding that seq
    raise after the engine ran it, as a crash mid-cycle would."""
    if not enabled():
        return
    for user_metadata, seq_id in runs_and_seqs:
        if str(user_metadata.get("force_cycle_failure_seq")) == str(seq_id):
            raise RuntimeError(f"forced cycle failure at seq {seq_id} (test hook)")


def count(name: str) -> None:
    _counters[name] += 1


def counters() -> dict[str, int] | None:
    """The counters, or None when hooks are off (the route then answers 404)."""
    return dict(_counters) if enabled() else None
