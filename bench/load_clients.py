"""Load: many concurrent SDK clients, each with its own model, against one deployment (DESIGN §6).

Each client creates a LoRA training client and, until the time is up, runs forward_backward,
optim_step and (every third round) a sample from the base model; every request's latency is kept
per kind. The report: p50/p95 per kind, futures lost (submitted and never resolved, or resolved
with an error: must be 0), and how the runs were spread over runners (`training_runs/{id}`).

    # against a running deployment
    .venv/bin/python bench/load_clients.py --base-url http://127.0.0.1:8000 --api-key tml-...
    # or start one here: web + two `manage.py runner` on PostgreSQL + Redis (both on loopback)
    .venv/bin/python bench/load_clients.py --start --clients 100 --seconds 60
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor

import httpx
from deployments import scale_deployment

import lorasmith
from lorasmith import AdamParams, Datum, ModelInput, SamplingParams

TOKENS = [3, 320, 265, 203, 44, 538, 83, 685, 4, 203, 3, 334, 87, 485, 88, 203]


class Tally:
    def __init__(self) -> None:
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.submitted = 0
        self.lost: list[str] = []
        self.models: list[str] = []

    async def timed(self, kind: str, make) -> object:
        self.submitted += 1
        start = time.perf_counter()
        try:
            result = await make()
        except Exception as error:  # noqa: BLE001 - every failure is a lost future, reported
            self.lost.append(f"{kind}: {type(error).__name__}: {error}")
            return None
        self.latency[kind].append(time.perf_counter() - start)
        return result


async def client(base_url: str, api_key: str, index: int, deadline: float, tally: Tally) -> None:
    service = lorasmith.ServiceClient(base_url=base_url, api_key=api_key)
    try:
        training = await tally.timed(
            "create_model", lambda: service.create_lora_training_client_async("tiny-llama", rank=4, seed=index)
        )
        if training is None:
            return
        tally.models.append(training.model_id)
        sampler = await service.create_sampling_client_async(base_model="tiny-llama")
        datum = Datum(model_input=ModelInput.from_ints(TOKENS[:-1]), loss_fn_inputs={"target_tokens": TOKENS[1:]})
        round_ = 0
        while time.monotonic() < deadline:

            async def fb():
                return await (await training.forward_backward_async([datum], "cross_entropy")).result_async()

            async def step():
                return await (await training.optim_step_async(AdamParams(learning_rate=1e-3))).result_async()

            await tally.timed("forward_backward", fb)
            await tally.timed("optim_step", step)
            if round_ % 3 == 0:
                await tally.timed(
                    "sample",
                    lambda: sampler.sample_async(
                        ModelInput.from_ints(TOKENS[:6]), 1, SamplingParams(max_tokens=4, temperature=0.0)
                    ),
                )
            round_ += 1
    finally:
        await asyncio.to_thread(service.close)


def spread(base_url: str, api_key: str, models: list[str]) -> Counter:
    runners: Counter = Counter()
    with httpx.Client(base_url=f"{base_url}/api/v1", headers={"X-API-Key": api_key}, timeout=30) as http:
        for model_id in models:
            held = http.get(f"training_runs/{model_id}").json().get("runner")
            runners[held["id"][:8] if held else "none"] += 1
    return runners


def report(tally: Tally, runners: Counter, clients: int, seconds: float) -> None:
    print(f"{clients} clients, {seconds:.0f} s; {tally.submitted} requests")
    print(f"{'kind':<18}{'n':>7}{'p50 ms':>10}{'p95 ms':>10}")
    for kind, values in sorted(tally.latency.items()):
        ordered = sorted(values)
        p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
        print(f"{kind:<18}{len(values):>7}{statistics.median(values) * 1000:>10.0f}{p95 * 1000:>10.0f}")
    print(f"futures lost: {len(tally.lost)}")
    for line in tally.lost[:10]:
        print("  ", line)
    print("runs per runner:", dict(runners))


async def drive(base_url: str, api_key: str, clients: int, seconds: float) -> None:
    # the SDK's blocking creators run in the default executor: one thread per client, or the first
    # requests would queue behind a handful of threads and measure the pool, not the service
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(clients + 4))
    tally = Tally()
    deadline = time.monotonic() + seconds
    start = time.monotonic()
    await asyncio.gather(*(client(base_url, api_key, i, deadline, tally) for i in range(clients)))
    report(tally, spread(base_url, api_key, tally.models), clients, time.monotonic() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url")
    parser.add_argument("--api-key")
    parser.add_argument("--start", action="store_true", help="start web + runners on PostgreSQL and Redis here")
    parser.add_argument("--runners", type=int, default=2)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    if args.start:
        with scale_deployment(args.runners) as (base_url, key):
            asyncio.run(drive(base_url, key, args.clients, args.seconds))
    else:
        if not (args.base_url and args.api_key):
            parser.error("--base-url and --api-key, or --start")
        asyncio.run(drive(args.base_url, args.api_key, args.clients, args.seconds))


if __name__ == "__main__":
    main()
