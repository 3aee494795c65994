"""The engine at real shapes: the goals of issue 17, ratios measured side by side in one run.

  [1] extra peak memory of one 8 x 512 forward_backward at Qwen3's vocabulary (151,936), against one
      fp32 (tokens x vocab) matrix: chunked logprobs vs one chunk for the whole pass (goal <= 0.5x)
  [2] 8 sequences of mixed lengths (32..512, 1,664 tokens) vs 8 equal ones with the same tokens,
      tokens/s (goal >= 0.85x)
  [3] 8 adapters in one cycle vs one by one, at 1 x 32 tokens each (goal >= 2x) and 2 x 256 each
      (goal >= 1x), on a ~34M-parameter Llama
  [4] engine step vs a bare PEFT + AdamW loop on the same batch (goal >= 1.0x)

Memory on CPU is the peak resident set of a child process per variant (its growth over the loaded
model); on CUDA `torch.cuda.max_memory_allocated`. Usage:
    python bench/real_shapes_bench.py [--device cpu|cuda] [--dtype bfloat16] [--repeats 3] [--only 1,2,3,4]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

sys.path.insert(0, str(Path(__file__).parent))
from engine_bench import batch, bench_multi_adapter_training, compare
from model_shapes import build

from gpu_runner import Engine
from gpu_runner.types import AdamParams, Datum, ExportPeft, ForwardBackward, LoraSpec, OptimStep

MIXED = [32, 64, 96, 128, 160, 224, 448, 512]  # 1,664 tokens


def _models_dir(args) -> Path:
    directory = Path(args.models_dir)
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def memory_child(model_dir: str, device: str, chunk: int | None) -> None:
    """In a fresh process: the peak memory one 8 x 512 step adds over the loaded engine."""
    engine = Engine(model_dir, device=device)
    if chunk is not None:
        engine.chunk_tokens = chunk
    engine.create_adapter("m", LoraSpec(rank=16, seed=0))
    data = batch(8, 512, 0, engine.info.vocab_size)
    if engine.device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = _rss_now()
    (result,) = engine.run_cycle([ForwardBackward("m", data)])
    assert result.ok, result.error
    if engine.device.type == "cuda":
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"extra": peak - before}))


def _rss_now() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def bench_memory(args) -> None:
    model_dir = build("qwen3-vocab-tiny", _models_dir(args) / "qwen3-vocab-tiny")
    matrix = 8 * 512 * 151936 * 4
    extras = {}
    for label, chunk in (("chunked", None), ("one chunk", 8 * 512)):
        out = subprocess.run(
            [sys.executable, __file__, "--memory-child", str(model_dir), "--device", args.device or "cpu"]
            + (["--chunk", str(chunk)] if chunk else []),
            capture_output=True,
            text=True,
            check=True,
        )
        extras[label] = json.loads(out.stdout.strip().splitlines()[-1])["extra"]
    print(
        f"[1] extra peak memory of one 8 x 512 step at vocab 151,936: chunked {extras['chunked'] / 2**30:.2f} GiB "
        f"= {extras['chunked'] / matrix:.2f}x one fp32 (tokens x vocab) matrix ({matrix / 2**30:.2f} GiB); "
        f"one chunk for the pass {extras['one chunk'] / 2**30:.2f} GiB = {extras['one chunk'] / matrix:.2f}x "
        f"(goal <= 0.5x)"
    )


def bench_mixed_lengths(engine: Engine, args) -> None:
    vocab = engine.info.vocab_size
    g = torch.Generator().manual_seed(1)

    def data_of(lengths: list[int]) -> list[Datum]:
        out = []
        for n in lengths:
            seq = torch.randint(5, vocab, (n + 1,), generator=g)
            out.append(Datum(seq[:-1].tolist(), {"target_tokens": seq[1:], "weights": torch.ones(n)}))
        return out

    mixed, equal = data_of(MIXED), data_of([sum(MIXED) // 8] * 8)
    engine.create_adapter("lengths", LoraSpec(rank=16, seed=0))

    def run(data):
        return lambda: engine.run_cycle([ForwardBackward("lengths", data), OptimStep("lengths", AdamParams())])

    default = engine.pack_row_tokens
    for rows in dict.fromkeys((default, 0, 2048)):
        engine.pack_row_tokens = rows
        t_equal, t_mixed, ratio = compare(run(equal), run(mixed), args.repeats)
        tokens = sum(MIXED)
        print(
            f"[2] mixed lengths 32..512 ({tokens} tokens), rows of at least {rows} tokens"
            f"{' (the default here)' if rows == default else ''}: {tokens / t_mixed:,.0f} tok/s, equal lengths "
            f"{tokens / t_equal:,.0f} tok/s -> {1 / ratio:.2f}x (goal >= 0.85x)"
        )
    engine.pack_row_tokens = default


def bench_vs_peft(engine: Engine, args) -> None:
    data = batch(8, 128, 0, engine.info.vocab_size)
    engine.create_adapter("step", LoraSpec(rank=16, seed=0))

    def engine_step():
        engine.run_cycle([ForwardBackward("step", data), OptimStep("step", AdamParams())])

    with tempfile.TemporaryDirectory() as tmp:
        engine.run_cycle([ExportPeft("step", Path(tmp))])
        base = AutoModelForCausalLM.from_pretrained(engine.info.model_dir, dtype=engine.dtype)
        peft = PeftModel.from_pretrained(base.to(engine.device), tmp, is_trainable=True)
    params = [p for p in peft.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95), eps=1e-12, foreach=True)
    ids = torch.tensor([d.model_input for d in data], device=engine.device)
    targets = torch.stack([d.loss_fn_inputs["target_tokens"] for d in data]).to(engine.device)

    def peft_step():
        logp = torch.log_softmax(peft(input_ids=ids).logits.float(), -1)
        (-logp.gather(-1, targets[..., None]).sum()).backward()
        optimizer.step()
        optimizer.zero_grad()

    t_engine, t_peft, ratio = compare(engine_step, peft_step, args.repeats)
    print(f"[4] training step 8 x 128: engine {t_engine * 1e3:.0f} ms, bare PEFT {t_peft * 1e3:.0f} ms -> {ratio:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--models-dir", default=str(Path(tempfile.gettempdir()) / "lorasmith-bench-models"))
    parser.add_argument("--only", default="1,2,3,4")
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--chunk", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args.memory_child, args.device, args.chunk)
        return
    only = set(args.only.split(","))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    if "1" in only:
        bench_memory(args)
    if only & {"2", "3", "4"}:
        model_dir = build("llama-34m", _models_dir(args) / "llama-34m")
        engine = Engine(str(model_dir), device=args.device, dtype=args.dtype)
        params = sum(p.numel() for p in engine.model.parameters())
        print(f"model llama-34m ({params / 1e6:.1f}M parameters) on {engine.device}, {engine.dtype}")
        if "2" in only:
            bench_mixed_lengths(engine, args)
        if "3" in only:
            bench_multi_adapter_training(engine, args, 1, 32, "[3]", ">= 2x")
            bench_multi_adapter_training(engine, args, 2, 256, "[3]", ">= 1x")
        if "4" in only:
            bench_vs_peft(engine, args)


if __name__ == "__main__":
    main()
