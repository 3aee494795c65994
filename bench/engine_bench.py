"""Engine benchmarks, ratios measured side by side in one run (never timing asserts in tests).

  1. training step: engine forward_backward+optim_step vs a bare PEFT + AdamW loop (goal >= 0.95x)
  2. 8 adapters in one cycle vs the same 8 run one by one (goal >= 2x aggregate tokens/s)
  3. sampling tokens/s vs transformers `generate` (goal >= 1x); 8 adapters batched vs sequential (goal >= 3x)

Usage: python bench/engine_bench.py [--model tiny-llama] [--device cpu|cuda] [--repeats 5]
(gpu_runner installed, editable: `pip install -e .` at the repository root)
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from gpu_runner import Engine
from gpu_runner.types import AdamParams, Datum, ExportPeft, ForwardBackward, LoraSpec, OptimStep, Sample, SamplingParams


def _once(fn) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def compare(fn_a, fn_b, repeats: int) -> tuple[float, float, float]:
    """Run A and B alternately (after a warm-up of each) so machine noise hits both alike.

    Returns the median seconds of A, of B, and the median of the per-pair ratios B/A."""
    fn_a(), fn_b()
    pairs = [(_once(fn_a), _once(fn_b)) for _ in range(repeats)]
    return (
        statistics.median(a for a, _ in pairs),
        statistics.median(b for _, b in pairs),
        statistics.median(b / a for a, b in pairs),
    )


def batch(n: int, length: int, seed: int, vocab: int) -> list[Datum]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        seq = torch.randint(5, vocab, (length + 1,), generator=g)
        out.append(Datum(seq[:-1].tolist(), {"target_tokens": seq[1:], "weights": torch.ones(length)}))
    return out


def bench_training_step(engine: Engine, args) -> float:
    data = batch(args.batch, args.length, 0, engine.info.vocab_size)
    engine.create_adapter("step", LoraSpec(rank=args.rank, seed=0))

    def engine_step():
        engine.run_cycle([ForwardBackward("step", data), OptimStep("step", AdamParams())])

    with tempfile.TemporaryDirectory() as tmp:
        engine.run_cycle([ExportPeft("step", Path(tmp))])
        base = AutoModelForCausalLM.from_pretrained(engine.info.model_dir, dtype=next(engine.model.parameters()).dtype)
        peft = PeftModel.from_pretrained(base.to(engine.device), tmp, is_trainable=True)
    params = [p for p in peft.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95), eps=1e-12)
    ids = torch.tensor([d.model_input for d in data], device=engine.device)
    targets = torch.stack([d.loss_fn_inputs["target_tokens"] for d in data]).to(engine.device)

    def peft_step():
        logp = torch.log_softmax(peft(input_ids=ids).logits.float(), -1)
        loss = -logp.gather(-1, targets[..., None]).sum()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    t_engine, t_peft, ratio = compare(engine_step, peft_step, args.repeats)
    print(
        f"[1] training step: engine {t_engine * 1e3:.1f} ms, bare PEFT {t_peft * 1e3:.1f} ms"
        f" -> {ratio:.2f}x (goal >= 0.95x)"
    )
    return ratio


def bench_multi_adapter_training(
    engine: Engine, args, per_adapter: int, length: int, label: str = "[2]", goal: str = ">= 2x"
) -> float:
    ids = [f"multi-{i}" for i in range(8)]
    for i, adapter_id in enumerate(ids):
        if adapter_id not in engine.adapters:
            engine.create_adapter(adapter_id, LoraSpec(rank=args.rank, seed=i))
    data = {a: batch(per_adapter, length, i, engine.info.vocab_size) for i, a in enumerate(ids)}
    tokens = 8 * per_adapter * length

    def one_cycle():
        engine.run_cycle([ForwardBackward(a, data[a]) for a in ids] + [OptimStep(a) for a in ids])

    def one_by_one():
        for a in ids:
            engine.run_cycle([ForwardBackward(a, data[a]), OptimStep(a)])

    t_cycle, t_seq, ratio = compare(one_cycle, one_by_one, args.repeats)
    print(
        f"{label} 8 adapters x {per_adapter} seqs x {length} tokens: one cycle {tokens / t_cycle:,.0f} tok/s, "
        f"one by one {tokens / t_seq:,.0f} tok/s -> {ratio:.2f}x (goal {goal})"
    )
    return ratio


def bench_sampling(engine: Engine, args) -> tuple[float, float]:
    prompt = list(range(10, 10 + args.prompt))
    params = SamplingParams(max_tokens=args.new_tokens, temperature=1.0, seed=1, stop=[])
    engine.create_adapter("sampler", LoraSpec(rank=args.rank, seed=0))
    n = args.num_samples

    def engine_sample():
        engine.run_cycle([Sample("sampler", prompt, n, params)])

    with tempfile.TemporaryDirectory() as tmp:
        engine.run_cycle([ExportPeft("sampler", Path(tmp))])
        base = AutoModelForCausalLM.from_pretrained(engine.info.model_dir, dtype=next(engine.model.parameters()).dtype)
        peft = PeftModel.from_pretrained(base.to(engine.device), tmp).eval()
    input_ids = torch.tensor([prompt], device=engine.device)

    def hf_generate():
        with torch.no_grad():
            peft.generate(
                input_ids=input_ids,
                do_sample=True,
                num_return_sequences=n,
                max_new_tokens=args.new_tokens,
                min_new_tokens=args.new_tokens,
                top_k=0,
                pad_token_id=0,
            )

    tokens = n * args.new_tokens
    t_engine, t_hf, vs_hf = compare(engine_sample, hf_generate, args.repeats)
    print(
        f"[3a] sampling {n} x {args.new_tokens} tokens: engine {tokens / t_engine:,.0f} tok/s, HF generate "
        f"{tokens / t_hf:,.0f} tok/s -> {vs_hf:.2f}x (goal >= 1x)"
    )

    ids = [f"multi-{i}" for i in range(8)]
    per_adapter = SamplingParams(max_tokens=args.new_tokens, temperature=1.0, seed=2, stop=[])

    def batched():
        engine.run_cycle([Sample(a, prompt, 1, per_adapter) for a in ids])

    def sequential():
        for a in ids:
            engine.run_cycle([Sample(a, prompt, 1, per_adapter)])

    t_batched, t_seq, multi = compare(batched, sequential, args.repeats)
    print(
        f"[3b] sampling 8 adapters: batched {8 * args.new_tokens / t_batched:,.0f} tok/s, sequential "
        f"{8 * args.new_tokens / t_seq:,.0f} tok/s -> {multi:.2f}x (goal >= 3x)"
    )
    return vs_hf, multi


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-llama")
    parser.add_argument("--device", default=None)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--small-batch", type=int, default=2)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--prompt", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--num-samples", type=int, default=8)
    args = parser.parse_args()
    torch.manual_seed(0)
    engine = Engine(args.model, data_dir=Path(args.data_dir) if args.data_dir else None, device=args.device)
    print(f"model {args.model} on {engine.device} ({torch.get_num_threads()} threads)")
    bench_training_step(engine, args)
    bench_multi_adapter_training(engine, args, args.small_batch, args.length)
    bench_multi_adapter_training(engine, args, 1, 32)  # tiny per-adapter batches: where batching pays most
    bench_sampling(engine, args)


if __name__ == "__main__":
    main()
