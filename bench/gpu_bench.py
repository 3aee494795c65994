"""Training throughput and MFU of the engine on a real model shape (random weights, no download).

MFU = flops_per_token x tokens/s / the device's dense bf16 peak (989 TFLOP/s for an H100/H200 SXM),
flops_per_token = 4·N (LoRA: forward, and backward through activations only) + causal attention,
as `model_shapes.flops_per_token` computes. Two workloads, each forward_backward + optim_step:
  one tenant:  64 sequences x 2,048 tokens (packed rows of 2,048)
  8 tenants:   8 adapters x 8 sequences x 2,048 tokens, one fused cycle
Usage: python bench/gpu_bench.py [--shape llama-3.1-8b] [--device cuda] [--steps 3] [--seq 2048]
(`--shape llama-34m --device cpu --sequences 2 --seq 128` runs the same code on a CPU in seconds.)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from engine_bench import batch
from model_shapes import build, flops_per_token

from gpu_runner import Engine
from gpu_runner.types import ForwardBackward, LoraSpec, OptimStep

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16.items() if key in name), None)


def timed_steps(engine: Engine, ops_of_step, steps: int) -> float:
    """Seconds per step, median of `steps` after one warm-up step."""
    engine.run_cycle(ops_of_step())
    times = []
    for _ in range(steps):
        if engine.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        results = engine.run_cycle(ops_of_step())
        if engine.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        assert all(r.ok for r in results), [r.error for r in results if not r.ok]
    return sorted(times)[len(times) // 2]


def report(label: str, engine: Engine, tokens: int, seconds: float, context: int, rank: int) -> None:
    config = engine.model.config
    flops = flops_per_token(config, context)
    peak = peak_flops(engine.device)
    memory = (
        f", peak memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if engine.device.type == "cuda" else ""
    )
    mfu = f", MFU {flops * tokens / seconds / peak:.1%}" if peak else " (no known peak for this device: no MFU)"
    print(f"{label}: {tokens:,} tokens in {seconds:.2f} s = {tokens / seconds:,.0f} tok/s{memory}{mfu}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="llama-3.1-8b")
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--sequences", type=int, default=64, help="sequences of the one tenant")
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--max-pass-tokens", type=int, default=None)
    parser.add_argument("--models-dir", default=str(Path(tempfile.gettempdir()) / "lorasmith-bench-models"))
    args = parser.parse_args()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    started = time.perf_counter()
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model_dir = build(args.shape, Path(args.models_dir) / args.shape, dtype=dtype, device=device)
    engine = Engine(
        str(model_dir),
        device=str(device),
        dtype=args.dtype,
        max_pass_tokens=args.max_pass_tokens,
        pack_row_tokens=args.seq,
    )
    params = sum(p.numel() for p in engine.model.parameters())
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(
        f"{args.shape}: {params / 1e9:.2f}B parameters on {where}, {engine.dtype}, micro-batch"
        f" {engine.max_pass_tokens:,} tokens, ready in {time.perf_counter() - started:.0f} s",
        flush=True,
    )
    vocab = engine.info.vocab_size

    engine.create_adapter("solo", LoraSpec(rank=args.rank, seed=0))
    solo = batch(args.sequences, args.seq, 0, vocab)
    seconds = timed_steps(engine, lambda: [ForwardBackward("solo", solo), OptimStep("solo")], args.steps)
    report("one tenant", engine, args.sequences * args.seq, seconds, args.seq, args.rank)
    engine.remove_adapter("solo")

    tenants = [f"tenant-{i}" for i in range(8)]
    per_tenant = max(1, args.sequences // 8)
    data = {t: batch(per_tenant, args.seq, i + 1, vocab) for i, t in enumerate(tenants)}
    for i, t in enumerate(tenants):
        engine.create_adapter(t, LoraSpec(rank=args.rank, seed=i))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    seconds = timed_steps(
        engine, lambda: [ForwardBackward(t, data[t]) for t in tenants] + [OptimStep(t) for t in tenants], args.steps
    )
    report("8 tenants", engine, 8 * per_tenant * args.seq, seconds, args.seq, args.rank)


if __name__ == "__main__":
    main()
