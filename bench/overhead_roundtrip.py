"""The service's own overhead (issue 22), embedded and scale path side by side in one run:

1. a tiny `forward` (8 tokens) round trip through the SDK and the server, one at a time: p50
   (goal < 30 ms on loopback);
2. pipelined training through the server (every forward_backward + optim_step sent, then waited
   for) vs the same steps on the bare engine in this process: tokens/s ratio (goal >= 0.95x).

  .venv/bin/python bench/overhead_roundtrip.py [--round-trips 30] [--steps 20] [--batch 8] [--length 128]
  [--only embedded|scale|pinned]  (scale and pinned need PostgreSQL and Redis on loopback)
  [--compare DIR]  (also serve from another checkout, e.g. `git archive <before> | tar -x -C DIR`,
                    alternating the two trees path by path: before/after side by side in one run)

Three paths: embedded (`manage.py serve` alone), scale (web + one `manage.py runner`), and pinned: the
scale path with the runner on a core of its own with one torch thread (`taskset`), the web process
and the client on the other (PostgreSQL and Redis, the machine's services, are not pinned), and the
bare engine on the runner's core and thread. On a CPU box the service's own work otherwise competes
with the engine for the same cores; pinned, the ratio is closer to what a GPU runner would see: how
long the engine waits on the service.

The bare engine is measured right before and right after each served run, in this process, and
the two averaged, so each ratio compares figures taken under the same machine load and speed (the
load average is printed with them). Both sides are warmed up at the measured shape first.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time

import deployments
import torch

import lorasmith
from gpu_runner import Engine
from gpu_runner.types import AdamParams, Datum, ForwardBackward, LoraSpec, OptimStep
from lorasmith import AdamParams as SdkAdam
from lorasmith import Datum as SdkDatum
from lorasmith import ModelInput

LR = 1e-4


def tokens(length: int, offset: int = 0) -> list[int]:
    return [(7 * i + offset) % 500 + 3 for i in range(length + 1)]


def round_trips(training, count: int) -> float:
    datum = SdkDatum(model_input=ModelInput.from_ints(tokens(8)[:-1]), loss_fn_inputs={"target_tokens": tokens(8)[1:]})
    training.forward([datum], "cross_entropy").result()  # warm-up: the adapter is built
    times = []
    for _ in range(count):
        start = time.perf_counter()
        training.forward([datum], "cross_entropy").result()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def served_tokens_per_second(training, steps: int, batch: int, length: int) -> float:
    data = [
        SdkDatum(
            model_input=ModelInput.from_ints(tokens(length, b)[:-1]),
            loss_fn_inputs={"target_tokens": tokens(length, b)[1:]},
        )
        for b in range(batch)
    ]
    start = time.perf_counter()
    futures = [
        (training.forward_backward(data, "cross_entropy"), training.optim_step(SdkAdam(learning_rate=LR)))
        for _ in range(steps)
    ]
    for fb, opt in futures:
        fb.result()
        opt.result()
    return steps * batch * length / (time.perf_counter() - start)


def bare_tokens_per_second(steps: int, batch: int, length: int) -> float:
    engine = Engine("tiny-llama")
    engine.create_adapter("bare", LoraSpec(rank=8, seed=1))
    data = [
        Datum(
            tokens(length, b)[:-1],
            {"target_tokens": torch.tensor(tokens(length, b)[1:]), "weights": torch.ones(length)},
        )
        for b in range(batch)
    ]
    cycle = [ForwardBackward("bare", data), OptimStep("bare", AdamParams(learning_rate=LR))]
    engine.run_cycle(cycle)  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        engine.run_cycle(cycle)
    return steps * batch * length / (time.perf_counter() - start)


PINNED = deployments.Pinning(runner_cpus="1", web_cpus="0")


@contextlib.contextmanager
def on_cpus(cpus: str, threads: int | None = None):
    """This process on `cpus` (and torch on `threads` threads) for the block."""
    before_cpus, before_threads = os.sched_getaffinity(0), torch.get_num_threads()
    os.sched_setaffinity(0, {int(c) for c in cpus.split(",")})
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before_cpus)
        torch.set_num_threads(before_threads)


def measure(name: str, deployment, args) -> dict[str, float]:
    """The pinned path's bare engine runs as its runner does (its core, one thread), and its client
    beside the web process."""
    pinned = name == "pinned"
    bare_place = on_cpus(PINNED.runner_cpus, 1) if pinned else contextlib.nullcontext()
    client_place = on_cpus(PINNED.web_cpus) if pinned else contextlib.nullcontext()
    with bare_place:
        before = bare_tokens_per_second(args.steps, args.batch, args.length)
    with client_place, deployment as (base_url, key):
        service = lorasmith.ServiceClient(base_url=base_url, api_key=key)
        try:
            training = service.create_lora_training_client("tiny-llama", rank=8, seed=1)
            p50 = round_trips(training, args.round_trips)
            served_tokens_per_second(training, 2, args.batch, args.length)  # warm-up, as the bare engine's
            served = served_tokens_per_second(training, args.steps, args.batch, args.length)
        finally:
            service.close()
    with on_cpus(PINNED.runner_cpus, 1) if pinned else contextlib.nullcontext():
        after = bare_tokens_per_second(args.steps, args.batch, args.length)
    return {"p50_ms": p50 * 1000, "served": served, "bare": (before + after) / 2}


@contextlib.contextmanager
def served_from(root: str | None):
    """Start deployments from `root` (None: this checkout)."""
    before = deployments.ROOT
    deployments.ROOT = deployments.Path(root) if root else before
    try:
        yield
    finally:
        deployments.ROOT = before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--round-trips", type=int, default=30)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--only", choices=["embedded", "scale", "pinned"])
    parser.add_argument("--compare", help="another checkout to serve from too (its figures print as 'before')")
    parser.add_argument("--repeat", type=int, default=1, help="alternate the trees this many times per path")
    args = parser.parse_args()
    paths = {
        "embedded": deployments.embedded_deployment,
        "scale": lambda: deployments.scale_deployment(1),
        "pinned": lambda: deployments.scale_deployment(1, PINNED),
    }
    trees = [("before", args.compare), ("after", None)] if args.compare else [("", None)]
    print(f"{'path':<18}{'forward p50 ms':>16}{'served tok/s':>14}{'bare tok/s':>12}{'ratio':>8}{'load avg':>10}")
    runs: dict[str, list[dict[str, float]]] = {}
    for name, start in paths.items():
        if args.only and name != args.only:
            continue
        for _ in range(args.repeat):
            for label, root in trees:
                with served_from(root):
                    got = measure(name, start(), args)
                title = f"{name} {label}".strip()
                runs.setdefault(title, []).append(got)
                _row(title, got["p50_ms"], got["served"], got["bare"], os.getloadavg()[0])
    if args.repeat > 1:
        print("medians over the repeats:")
        for title, got in runs.items():
            p50, served, bare = (statistics.median(g[k] for g in got) for k in ("p50_ms", "served", "bare"))
            ratio = statistics.median(g["served"] / g["bare"] for g in got)
            print(f"{title:<18}{p50:>16.1f}{served:>14.0f}{bare:>12.0f}{ratio:>7.2f}x")


def _row(title: str, p50_ms: float, served: float, bare: float, load: float) -> None:
    print(f"{title:<18}{p50_ms:>16.1f}{served:>14.0f}{bare:>12.0f}{served / bare:>7.2f}x{load:>10.1f}", flush=True)


if __name__ == "__main__":
    main()
