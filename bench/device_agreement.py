"""The device check's correctness half: the CUDA engine agrees with the CPU one, and fused multi-tenant
cycles equal each adapter alone on the device. Prints one line per check and exits non-zero on a miss.

  - forward logprobs, CUDA fp32 vs CPU fp32 (<= 1e-4) and CUDA bf16 vs CPU fp32 (<= 0.1 per token)
  - 20 training steps, CUDA bf16 vs CPU fp32: per-token loss within 2e-2, every gradient finite
  - 3 adapters in one fused cycle vs each alone, on CUDA in fp32 (<= 1e-4) and bf16 (loss within 1e-2 relative)
Usage: python bench/device_agreement.py [--models tiny-llama,tiny-qwen3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

from gpu_runner import Engine
from gpu_runner.types import AdamParams, Datum, ForwardBackward, LoraSpec, OptimStep

MISSES: list[str] = []


def check(label: str, ok: bool, detail: str) -> None:
    print(f"{'ok  ' if ok else 'MISS'} {label}: {detail}", flush=True)
    if not ok:
        MISSES.append(label)


def data_for(engine: Engine, seed: int, count: int = 3) -> list[Datum]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(count):
        seq = torch.randint(5, engine.info.vocab_size, (12 + 7 * i,), generator=g)
        out.append(Datum(seq[:-1].tolist(), {"target_tokens": seq[1:], "weights": torch.ones(len(seq) - 1)}))
    return out


def forward(engine: Engine, adapter: str, data: list[Datum]) -> list[torch.Tensor]:
    (result,) = engine.run_cycle([ForwardBackward(adapter, data, forward_only=True)])
    assert result.ok, result.error
    return [o["logprobs"] for o in result.output.loss_fn_outputs]


def train(engine: Engine, data: list[Datum], steps: int) -> tuple[list[float], bool]:
    engine.create_adapter("train", LoraSpec(rank=8, seed=0))
    tokens = sum(len(d.model_input) for d in data)
    losses, finite = [], True
    for _ in range(steps):
        (fb,) = engine.run_cycle([ForwardBackward("train", data)])
        finite &= all(bool(torch.isfinite(p.grad).all()) for p in engine.adapter("train").parameters())
        engine.run_cycle([OptimStep("train", AdamParams(learning_rate=1e-3))])
        losses.append(fb.output.metrics["loss:sum"] / tokens)
    engine.remove_adapter("train")
    return losses, finite


def fused_vs_alone(engine: Engine, tolerance: float) -> float:
    ids = [f"fused-{i}" for i in range(3)] + [f"alone-{i}" for i in range(3)]
    for i, adapter in enumerate(ids):
        engine.create_adapter(adapter, LoraSpec(rank=(4, 8, 16)[i % 3], seed=i % 3))
    worst = 0.0
    for step in range(2):
        batches = [data_for(engine, 100 + 10 * step + i, count=i + 1) for i in range(3)]
        fused = engine.run_cycle(
            [ForwardBackward(f"fused-{i}", batches[i]) for i in range(3)] + [OptimStep(f"fused-{i}") for i in range(3)]
        )
        for i in range(3):
            alone = engine.run_cycle([ForwardBackward(f"alone-{i}", batches[i]), OptimStep(f"alone-{i}")])
            a, b = alone[0].output.metrics["loss:sum"], fused[i].output.metrics["loss:sum"]
            worst = max(worst, abs(a - b) / max(abs(a), 1e-6))
    for adapter in ids:
        engine.remove_adapter(adapter)
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tiny-llama,tiny-qwen3")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("no CUDA device: this check compares the CUDA engine with the CPU one")
    data_dir = Path(tempfile.mkdtemp(prefix="lorasmith-device-"))
    for name in args.models.split(","):
        cpu = Engine(name, data_dir=data_dir, device="cpu")
        cuda32 = Engine(name, data_dir=data_dir, device="cuda", dtype="float32")
        cuda16 = Engine(name, data_dir=data_dir, device="cuda")
        data = data_for(cpu, 1)
        for engine in (cpu, cuda32, cuda16):
            engine.create_adapter("probe", LoraSpec(rank=8, seed=3))
        reference = forward(cpu, "probe", data)
        for label, engine, tolerance in (("cuda fp32", cuda32, 1e-4), ("cuda bf16", cuda16, 0.1)):
            got = forward(engine, "probe", data)
            diff = max(float((g - r).abs().max()) for g, r in zip(got, reference))
            check(f"{name} forward logprobs, {label} vs cpu fp32", diff <= tolerance, f"max |diff| {diff:.2e}")
        cpu_losses, _ = train(cpu, data, 20)
        gpu_losses, finite = train(cuda16, data, 20)
        gap = abs(cpu_losses[-1] - gpu_losses[-1])
        check(
            f"{name} 20 steps, cuda bf16 vs cpu fp32",
            gap <= 2e-2 and finite,
            f"per-token loss {cpu_losses[0]:.3f} -> cpu {cpu_losses[-1]:.4f}, cuda bf16 {gpu_losses[-1]:.4f} "
            f"(gap {gap:.1e}), gradients finite: {finite}",
        )
        for label, engine, tolerance in (("fp32", cuda32, 1e-5), ("bf16", cuda16, 1e-2)):
            worst = fused_vs_alone(engine, tolerance)
            check(f"{name} 3 adapters fused vs alone, cuda {label}", worst <= tolerance, f"worst loss gap {worst:.1e}")
    sys.exit(1 if MISSES else 0)


if __name__ == "__main__":
    main()
