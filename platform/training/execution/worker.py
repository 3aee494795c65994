"""Starting a runner: it registers one `Runner` row per base model it serves and a Dramatiq worker
consumes those runners' own queues.

One worker thread: the engine is one resident model per device, and a runner never has two cycles
in flight. A timer thread renews the rows' heartbeats and, like any live process, declares runners
without one dead so their runs move here or to another live runner (DESIGN §6). On a graceful stop
the runner retires itself at once: its runs move without waiting for the deadline.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from datetime import timedelta

import dramatiq
from django.conf import settings
from django.db import DatabaseError, close_old_connections
from django.utils import timezone

from .. import dispatch, events, runners
from ..models import Runner
from . import actors, cycle, snapshots  # noqa: F401 - actors registers the cycle actor with the broker
from .engines import record_heartbeat, report_alive, resident_if_loaded

log = logging.getLogger(__name__)

ALIVE_EVERY_SECONDS = 10.0  # at most; a third of LORASMITH_RUNNER_DEAD_AFTER_SECONDS when that is less
# How long an idle runner's consumer waits for its queue between its worker's other duties (acks
# of delayed messages, a look at whether to stop). It is woken at once when a message comes: the
# Redis broker rings a doorbell (`doorbell`), the in-process one and RabbitMQ deliver to a blocked
# wait; so this bounds no latency, only how often an idle runner calls its broker.
IDLE_WAIT_MS = 1000
PUSH_DRAIN_SECONDS = 10.0


class RunnerWorker(dramatiq.Worker):
    lorasmith_managed = True  # registers and recovers itself in start_worker; RecoverOnBoot leaves it alone
    runner_ids: list[str]

    def start(self) -> None:
        super().start()
        self._stop_reporting = start_reporting_alive(self.runner_ids)

    def stop(self, timeout: int = 600_000) -> None:
        self._stop_reporting.set()
        super().stop(timeout)  # the cycle in flight finishes and publishes first
        snapshot_all(self.runner_ids)
        retire_all(self.runner_ids)
        if not events.drain(PUSH_DRAIN_SECONDS):  # the last pushes, before the publisher's thread dies
            log.warning("pushes still unsent after %s s; their clients reconcile by reading", PUSH_DRAIN_SECONDS)


def beat_seconds() -> float:
    return min(ALIVE_EVERY_SECONDS, settings.LORASMITH.runner_dead_after_seconds / 3)


def start_reporting_alive(runner_ids: Sequence[str]) -> threading.Event:
    """`keep_reporting_alive` on a daemon thread; set the returned event to stop it."""
    stop = threading.Event()
    thread = threading.Thread(target=keep_reporting_alive, args=(stop, None, runner_ids), name="runner-alive")
    thread.daemon = True
    thread.start()
    return stop


def keep_reporting_alive(
    stop: threading.Event, every_seconds: float | None = None, runner_ids: Sequence[str] = ()
) -> None:
    """Every `every_seconds` until `stop` is set: renew the runners' heartbeats (reviving one that
    was declared dead while it stalled), retire overdue runners of the same base models and dispatch
    what they left; and renew the overview's heartbeat rows, so "quiet" means a runner that
    stopped reporting, not one with nothing to do."""
    while not stop.wait(every_seconds or beat_seconds()):
        try:
            for runner_id in runner_ids:
                beat(runner_id)
            report_alive()
        except DatabaseError as error:  # a busy database: the next report comes soon enough
            log.warning("could not renew the runner heartbeat: %s", error)
        except Exception:
            log.exception("the runner's heartbeat failed")
        finally:
            close_old_connections()


def beat(runner_id: str) -> None:
    if not runners.heartbeat(runner_id):
        log.warning("runner %s was declared dead while it stalled; it comes back under a new epoch", runner_id)
        runners.revive(runner_id)
    row = Runner.objects.filter(pk=runner_id).values("base_model", "busy_cycle", "busy_since").first()
    if row is None:
        return
    lost_after = timezone.now() - timedelta(seconds=2 * beat_seconds())
    held, since = row["busy_cycle"], row["busy_since"]
    if held and since is not None and since < lost_after and cycle.running_cycle(runner_id) != held:
        dispatch.recover_lost_cycle(runner_id, held)
    dispatch.dispatch(row["base_model"])  # retires overdue runners and sends their runs' work on


def snapshot_all(runner_ids: list[str]) -> None:
    """On a graceful stop: snapshot the runs held here, so whoever takes them replays little."""
    for runner_id in runner_ids:
        resident = resident_if_loaded(runner_id)
        if resident is None:
            continue
        try:
            taken = snapshots.take_all(runner_id, resident)
            log.info("runner %s stopping: %d runs snapshotted", runner_id, taken)
        except Exception:
            log.exception("runner %s could not snapshot its runs on stopping", runner_id)


def retire_all(runner_ids: list[str]) -> None:
    for runner_id in runner_ids:
        try:
            dispatch.retire(runner_id, reason="stopped")
        except Exception:
            log.exception("runner %s could not retire; it is declared dead after the deadline", runner_id)
    close_old_connections()


def start_worker(base_models: list[str], device: str = "") -> dramatiq.Worker:
    broker = dramatiq.get_broker()
    registered = [runners.register(m, device) for m in base_models]
    for runner in registered:
        broker.declare_queue(runner.queue)
    worker = RunnerWorker(broker, queues={r.queue for r in registered}, worker_threads=1, worker_timeout=IDLE_WAIT_MS)
    worker.runner_ids = [r.id for r in registered]
    worker.start()
    dispatch.recover(base_models)
    for runner in registered:  # the overview lists this runner from the start, not after its first cycle
        record_heartbeat(runner)
    return worker
