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
    return Engine("tiny-llama", data_dir=engine_data_dir)
