"""DESIGN §6 on the scale path (PostgreSQL, Redis, separate processes): two `manage.py runner`
processes of tiny-llama. Four runs land on both (the API says which) and each trains to exactly
its numbers alone on the bare engine; then one runner is SIGKILLed mid-training: its runs move to
the other within the deadline, every accepted future completes, the final adapters equal an
uninterrupted run's (a forward-only loss after the last step), and the takeover replayed from a
snapshot (set before the kill) fewer operations than the run had."""

from __future__ import annotations

import re
import signal

import pytest

from tests.conftest import redis_server

from .flow import SEQUENCE
from .test_scale_runners import reference_losses
from .wire import Wire, datum_json

STEPS_BEFORE, STEPS_AFTER = 3, 3
LR = 1e-2
ENV = {
    "LORASMITH_RUNNER_DEAD_AFTER_SECONDS": "6",
    "LORASMITH_SNAPSHOT_EVERY_STEPS": "2",
    "LORASMITH_LOG_LEVEL": "INFO",
}


def _step(wire: Wire, model_id: str, step: int) -> tuple[dict, dict]:
    return (
        wire.forward_backward(model_id, 2 * step + 1, [datum_json(SEQUENCE)]),
        wire.optim_step(model_id, 2 * step + 2, LR),
    )


@pytest.mark.slow
@pytest.mark.services
def test_two_runner_processes_share_runs_and_survive_a_sigkill(tmp_path):
    with redis_server(tmp_path, extra_env=ENV) as server:
        server.processes.append(server._spawn("runner-2", "runner"))
        for name in ("runner", "runner-2"):
            server.wait_for_log(name, "runner ready", timeout=120)
        wire = Wire(server.client())
        session = wire.session()
        seeds = {seq: 20 + seq for seq in range(4)}
        models = {seq: wire.model(session, seq, seed=seed) for seq, seed in seeds.items()}
        losses: dict[int, list[dict]] = {seq: [] for seq in models}
        for step in range(STEPS_BEFORE):  # pipelined: every run's step sent, then waited for
            handles = {seq: _step(wire, model_id, step) for seq, model_id in models.items()}
            for seq, (fb, opt) in handles.items():
                losses[seq].append(wire.result(fb))
                wire.result(opt)
        held = {seq: wire.get(f"training_runs/{m}") for seq, m in models.items()}
        assert len({h["runner"]["id"] for h in held.values()}) == 2  # the four runs landed on both
        assert all(h["snapshot_seq_id"] == 4 for h in held.values())  # the snapshot after step 2

        victim = server.processes[1]
        # stopped before the next steps are sent, killed after: it holds accepted work it never ran
        # (however fast it is, it cannot finish the run before the kill)
        victim.send_signal(signal.SIGSTOP)
        pending = {
            seq: [_step(wire, m, step) for step in range(STEPS_BEFORE, STEPS_BEFORE + STEPS_AFTER)]
            for seq, m in models.items()
        }
        finals = {
            seq: wire.forward_backward(
                m, 2 * (STEPS_BEFORE + STEPS_AFTER) + 1, [datum_json(SEQUENCE)], forward_only=True
            )
            for seq, m in models.items()
        }
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=30)

        for seq in models:  # every accepted future completes, with the numbers of a run never interrupted
            for fb, opt in pending[seq]:
                losses[seq].append(wire.result(fb, timeout=180))
                assert "metrics" in wire.result(opt, timeout=180)
            losses[seq].append(wire.result(finals[seq], timeout=180))
            got = [answer["metrics"]["loss:sum"] for answer in losses[seq]]
            assert got == pytest.approx(
                reference_losses(seeds[seq], steps=STEPS_BEFORE + STEPS_AFTER), rel=1e-5, abs=1e-6
            )

        survivors = {wire.get(f"training_runs/{m}")["runner"]["id"] for m in models.values()}
        assert len(survivors) == 1  # all on the runner still alive
        moved = [seq for seq, h in held.items() if h["runner"]["id"] not in survivors]
        assert moved  # the killed runner held some
        replays = re.findall(
            r"restored run (\S+) from its snapshot at seq (\d+), replaying (\d+) operations",
            (server.logs / "runner-2.log").read_text(),
        )
        replayed = {run: int(count) for run, _, count in replays}
        total_ops = 2 * (STEPS_BEFORE + STEPS_AFTER) + 2  # create, the steps, the final forward
        for seq in moved:
            assert models[seq] in replayed and replayed[models[seq]] < total_ops
