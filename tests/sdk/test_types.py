"""Types: Tinker's names and defaults, conversions to and from numpy and torch, metric merging."""

from __future__ import annotations

import numpy as np
import torch

from lorasmith import AdamParams, Datum, ModelInput, SamplingParams, TensorData
from lorasmith.types import reduce_metrics


def test_defaults_match_the_design():
    assert AdamParams().model_dump() == {
        "learning_rate": 1e-4,
        "beta1": 0.9,
        "beta2": 0.95,
        "eps": 1e-12,
        "weight_decay": 0.0,
        "grad_clip_norm": 0.0,
    }
    params = SamplingParams()
    assert (params.max_tokens, params.temperature, params.top_k, params.top_p, params.stop, params.seed) == (
        None,
        1.0,
        -1,
        1.0,
        None,
        None,
    )


def test_model_input_and_tensor_conversions():
    model_input = ModelInput.from_ints([1, 2, 3]).append_int(4)
    assert model_input.to_ints() == [1, 2, 3, 4] and model_input.length == 4
    array = np.arange(6, dtype=np.float64).reshape(2, 3)
    data = TensorData.from_numpy(array)
    assert data.dtype == "float32" and data.shape == [2, 3]
    assert torch.equal(data.to_torch(), torch.arange(6, dtype=torch.float32).reshape(2, 3))
    assert TensorData.from_torch(torch.tensor([5, 6])).dtype == "int64"


def test_datum_fixes_dtypes_of_known_inputs():
    datum = Datum(
        model_input=ModelInput.from_ints([1, 2]),
        loss_fn_inputs={"target_tokens": [2.0, 3.0], "weights": [1, 0], "advantages": torch.tensor([1, 2])},
    )
    inputs = datum.loss_fn_inputs
    assert (inputs["target_tokens"].dtype, inputs["weights"].dtype, inputs["advantages"].dtype) == (
        "int64",
        "float32",
        "float32",
    )
    assert inputs["target_tokens"].data == [2, 3]


def test_metrics_merge_by_reduction_suffix():
    chunks = [
        {"loss:sum": 1.0, "acc:mean": 0.5, "lo:min": 3.0, "hi:max": 1.0, "only_first:sum": 9.0},
        {"loss:sum": 2.0, "acc:mean": 1.0, "lo:min": 2.0, "hi:max": 4.0},
    ]
    assert reduce_metrics(chunks, [1, 3]) == {"loss:sum": 3.0, "acc:mean": 0.875, "lo:min": 2.0, "hi:max": 4.0}
