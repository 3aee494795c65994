"""The sampler's randomness is a pure function of (seed stream, step), drawn on the device; rows that
finish early leave the batch without changing what the others draw."""

from __future__ import annotations

import torch

from gpu_runner.sampler import row_stream, stream_keys, uniforms
from gpu_runner.types import Sample, SamplingParams

from .reference import new_adapter


def test_uniforms_depend_on_the_stream_and_step_alone():
    keys = stream_keys([row_stream(7, 0), row_stream(7, 1), row_stream(8, 0)], torch.device("cpu"))
    first = uniforms(keys, 3)
    alone = uniforms(stream_keys([row_stream(7, 1)], torch.device("cpu")), 3)
    assert first[1] == alone[0]  # a row's draw does not depend on its neighbours
    assert len(set(first.tolist())) == 3  # nor equal theirs
    assert not torch.equal(uniforms(keys, 3), uniforms(keys, 4))


def test_uniforms_are_uniform():
    """Kolmogorov-Smirnov against U(0, 1) over 20,000 draws (20 streams x 1,000 steps): the 0.1%
    critical value of the statistic is 1.95 / sqrt(n)."""
    keys = stream_keys([row_stream(seed, 0) for seed in range(20)], torch.device("cpu"))
    draws = torch.cat([uniforms(keys, step) for step in range(1000)]).double().sort().values
    n = draws.numel()
    assert float(draws[0]) >= 0.0 and float(draws[-1]) < 1.0
    grid = torch.arange(1, n + 1, dtype=torch.float64) / n
    statistic = max(float((grid - draws).abs().max()), float((draws - (grid - 1.0 / n)).abs().max()))
    assert statistic < 1.95 / n**0.5


def test_a_row_that_stops_early_changes_nothing_for_the_others(engine):
    adapter_id = new_adapter(engine, rank=4, seed=2)
    long = SamplingParams(max_tokens=12, temperature=1.0, seed=11, stop=[])
    (greedy,) = engine.run_cycle([Sample(None, [5, 6, 7], 1, SamplingParams(max_tokens=2, temperature=0.0))])
    first_token = greedy.output.sequences[0].tokens[0]
    short = SamplingParams(max_tokens=12, temperature=0.0, stop=[first_token])  # finishes after one token
    # the base model's request and the adapter's share one generation batch (one wave)
    together = engine.run_cycle([Sample(None, [5, 6, 7], 1, short), Sample(adapter_id, [9, 8, 7, 6], 2, long)])
    (alone,) = engine.run_cycle([Sample(adapter_id, [9, 8, 7, 6], 2, long)])
    assert together[0].output.sequences[0].tokens == [first_token]
    assert [s.tokens for s in together[1].output.sequences] == [s.tokens for s in alone.output.sequences]
    assert all(len(s.tokens) == 12 for s in alone.output.sequences)
