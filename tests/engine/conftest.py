"""Engine fixtures: one tiny-llama engine shared by the whole test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpu_runner import Engine


@pytest.fixture(scope="session")
def engine_data_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("lorasmith-engine-data")


@pytest.fixture(scope="session")
def engine(engine_data_dir) -> Engine:
    """Small logprob chunks and micro-batches, so every engine test also runs through the chunked
    head and the gradient accumulation across micro-batches (both exact by design)."""
    engine = Engine("tiny-llama", data_dir=engine_data_dir, max_pass_tokens=24)
    engine.chunk_tokens = 5
    return engine
