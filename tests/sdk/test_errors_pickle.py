"""Every error the SDK exports survives pickling (e.g. raised in a worker process) with its
message and attributes; a new error class is covered as soon as it is exported."""

from __future__ import annotations

import inspect
import pickle

import pytest

import lorasmith

EXPORTED = [getattr(lorasmith, name) for name in lorasmith.__all__]
ERRORS = sorted(
    {value for value in EXPORTED if isinstance(value, type) and issubclass(value, BaseException)},
    key=lambda kind: kind.__name__,
)
# a value for every constructor argument an error class takes; a new argument needs a line here
ARGUMENTS = {
    "message": "rank 2048 is above the limit of 1024",
    "status_code": 418,
    "field": "lora_config.rank",
    "request_id": "req-17",
    "category": "user",
}
# what the transport sets on an error after making it
SET_LATER = {"retry_after": 2.5, "consumed_seq_id": 7}


def make(kind: type[BaseException]) -> BaseException:
    """An instance with every constructor argument given (a class with no __init__ of its own
    takes the message alone), and the attributes the transport sets afterwards."""
    parameters = list(inspect.signature(kind.__init__).parameters.values())[1:]
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in parameters):
        error = kind(ARGUMENTS["message"])
    else:
        error = kind(**{p.name: ARGUMENTS[p.name] for p in parameters})
    for name, value in SET_LATER.items():
        if hasattr(error, name):
            setattr(error, name, value)
    return error


def test_every_exported_error_class_is_listed():
    names = {kind.__name__ for kind in ERRORS}
    assert {"LorasmithError", "APIError", "RequestFailedError", "RateLimitError", "APITimeoutError"} <= names


@pytest.mark.parametrize("kind", ERRORS, ids=lambda kind: kind.__name__)
def test_error_round_trips_through_pickle(kind):
    error = make(kind)

    restored = pickle.loads(pickle.dumps(error))

    assert type(restored) is kind
    assert str(restored) == str(error) and ARGUMENTS["message"] in str(error)
    assert restored.args == error.args
    assert vars(restored) == vars(error)
    for name in [*ARGUMENTS, *SET_LATER]:
        assert getattr(restored, name, None) == getattr(error, name, None), name
