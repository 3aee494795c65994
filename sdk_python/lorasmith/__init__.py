"""Lorasmith's Python SDK: Tinker's programming model against a self-hosted Lorasmith server.

import lorasmith
service = lorasmith.ServiceClient(base_url="http://127.0.0.1:8000", api_key="tml-...")
training = service.create_lora_training_client("tiny-llama", rank=16)
training.forward_backward(data, "cross_entropy").result()
"""

from . import types
from .errors import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    InternalServerError,
    LorasmithError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    RequestFailedError,
    RequestTooLargeError,
    UnprocessableEntityError,
)
from .futures import APIFuture, wait_all
from .rest import RestClient
from .sampling import SamplingClient
from .service import ServiceClient
from .training import TrainingClient
from .types import (
    AdamParams,
    Datum,
    EncodedTextChunk,
    ForwardBackwardOutput,
    ModelInput,
    OptimStepResponse,
    SampledSequence,
    SampleResponse,
    SamplingParams,
    TensorData,
)

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIFuture",
    "APIStatusError",
    "APITimeoutError",
    "AdamParams",
    "AuthenticationError",
    "BadRequestError",
    "ConflictError",
    "Datum",
    "EncodedTextChunk",
    "ForwardBackwardOutput",
    "InternalServerError",
    "LorasmithError",
    "ModelInput",
    "NotFoundError",
    "OptimStepResponse",
    "PermissionDeniedError",
    "RateLimitError",
    "RequestFailedError",
    "RequestTooLargeError",
    "RestClient",
    "SampleResponse",
    "SampledSequence",
    "SamplingClient",
    "SamplingParams",
    "ServiceClient",
    "TensorData",
    "TrainingClient",
    "UnprocessableEntityError",
    "types",
    "wait_all",
]
