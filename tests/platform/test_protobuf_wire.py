"""forward_backward bodies in Tinker's protobuf form (TINKER_WIRE.md §4.3, §9) go through the same
door as JSON ones: a body the JSON path accepts is stored identically when it comes as protobuf
(dense or sparse CSR tensors, compressed or not), and one it refuses is refused with the same
status, field, message and used-up seq_id."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zstandard

from api.tinker_proto import ForwardBackwardRequest
from training.models import Operation

from .test_bad_input import CASES, GOOD
from .wire import Wire, datum_json

pytestmark = pytest.mark.django_db

DTYPES = {"float32": (1, "<f4"), "int64": (2, "<i8"), "int32": (3, "<i4")}


def proto_body(body: dict, sparse: tuple[str, ...] = ()) -> bytes:
    """`body` (the JSON form) as the SDK would encode it; inputs named in `sparse` as CSR."""
    message = ForwardBackwardRequest(
        model_id=body.get("model_id", ""),
        seq_id=body.get("seq_id") or 0,
        loss_fn=body.get("loss_fn", ""),
        forward_only=body.get("forward_only", False),
    )
    for key, value in (body.get("loss_fn_config") or {}).items():  # dual-written, as the SDK does
        message.loss_fn_config[key] = value
        message.loss_fn_config_v2[key].number = value
    for datum in body["data"]:
        added = message.data.add()
        for chunk in datum["model_input"]["chunks"]:
            added.model_input.add().encoded_text.tokens = np.asarray(chunk["tokens"], "<i4").tobytes()
        for name, tensor in datum["loss_fn_inputs"].items():
            number, dtype = DTYPES[tensor["dtype"]]
            target = added.loss_fn_inputs[name]
            target.dtype = number
            target.shape.extend(tensor.get("shape", []))
            values = np.asarray(tensor["data"], dtype)
            if name in sparse:
                dense = values.reshape(tensor["shape"])
                rows, cols = np.nonzero(dense)
                target.sparse_csr.values = dense[rows, cols].tobytes()
                target.sparse_csr.crow_indices = (
                    np.searchsorted(rows, np.arange(len(dense) + 1)).astype("<i8").tobytes()
                )
                target.sparse_csr.col_indices = cols.astype("<i8").tobytes()
            else:
                target.dense = values.tobytes()
    return message.SerializeToString()


def post_proto(api: Wire, path: str, raw: bytes, **headers: str):
    return api.client.client.post(f"/api/v1/{path}", raw, content_type="application/x-protobuf", **headers)


@pytest.fixture
def two_models(api):
    """Two fresh models of one session, one fed JSON and one fed protobuf."""
    session = api.session()
    return [api.create_model(session, n).json()["model_id"] for n in (0, 1)]


def _payload(response) -> dict:
    assert response.status_code == 200, response.content
    return Operation.objects.get(id=response.json()["request_id"]).payload


def test_a_protobuf_body_is_stored_as_the_same_json_body(api, two_models):
    json_model, proto_model = two_models
    body = Wire.forward_backward_body(json_model, 1, [datum_json(GOOD), datum_json(GOOD[:5], [0.5, 0.0, 2.0, 1.0])])
    stored = _payload(api.send("forward_backward", body))
    assert _payload(post_proto(api, "forward_backward", proto_body({**body, "model_id": proto_model}))) == stored


def test_sparse_2d_tensors_and_zstd_bodies_decode_to_the_dense_body(api, two_models):
    json_model, proto_model = two_models
    n = len(GOOD) - 1
    targets = [[GOOD[i + 1], 7 if i % 3 == 0 else 0] for i in range(n)]  # (N, 2), mostly zeros in column 1
    weights = [[1.0, 0.25 if i % 3 == 0 else 0.0] for i in range(n)]
    datum = {
        "model_input": {"chunks": [{"type": "encoded_text", "tokens": GOOD[:-1]}]},
        "loss_fn_inputs": {
            "target_tokens": {"data": sum(targets, []), "dtype": "int64", "shape": [n, 2]},
            "weights": {"data": sum(weights, []), "dtype": "float32", "shape": [n, 2]},
        },
    }
    body = Wire.forward_backward_body(json_model, 1, [datum])
    stored = _payload(api.send("forward_backward", body))
    raw = proto_body({**body, "model_id": proto_model}, sparse=("target_tokens", "weights"))
    assert _payload(post_proto(api, "forward_backward", raw)) == stored
    compressed = zstandard.ZstdCompressor().compress(proto_body({**body, "model_id": proto_model, "seq_id": 2}))
    assert _payload(post_proto(api, "forward_backward", compressed, HTTP_CONTENT_ENCODING="zstd")) == stored


def test_forward_takes_protobuf_too_and_is_forward_only(api, two_models):
    body = Wire.forward_backward_body(two_models[1], 1)
    assert _payload(post_proto(api, "forward", proto_body(body)))["forward_only"] is True


@pytest.mark.parametrize("name,changes,field,message", CASES, ids=[c[0] for c in CASES])
def test_a_refusal_is_the_same_for_both_encodings(api, two_models, name, changes, field, message):
    json_model, proto_model = two_models
    body = {"model_id": json_model, "seq_id": 1, "data": [datum_json(GOOD)], "loss_fn": "cross_entropy", **changes}
    body = {k: v for k, v in body.items() if v is not None}
    by_json = api.send("forward_backward", body)
    by_proto = post_proto(api, "forward_backward", proto_body({**body, "model_id": proto_model}))
    assert by_json.status_code == by_proto.status_code == 400
    assert by_proto.json() == by_json.json() and by_proto.json()["field"] == field
    assert message in by_proto.json()["error"]


def test_nan_is_refused_at_the_same_place_as_in_json(api, two_models):
    json_model, proto_model = two_models
    weights = [1.0, 1.0, float("nan"), 1.0, 1.0, 1.0, 1.0, 1.0]
    body = Wire.forward_backward_body(json_model, 1, [datum_json(GOOD, weights)])
    by_json = api.client.client.post("/api/v1/forward_backward", json.dumps(body), content_type="application/json")
    by_proto = post_proto(api, "forward_backward", proto_body({**body, "model_id": proto_model}))
    assert by_proto.status_code == by_json.status_code == 400
    assert by_proto.json() == by_json.json()
    assert by_proto.json()["field"] == "data[0].loss_fn_inputs.weights.data[2]"
    assert by_proto.json()["consumed_seq_id"] == 1


def _message(raw: bytes):
    message = ForwardBackwardRequest()
    message.ParseFromString(raw)
    return message


def _sparse_weights(message, shape: list[int], crow: list[int], cols: list[int]) -> None:
    weights = message.data[0].loss_fn_inputs["weights"]
    del weights.shape[:]
    weights.shape.extend(shape)
    weights.sparse_csr.values = np.ones(len(cols), "<f4").tobytes()
    weights.sparse_csr.crow_indices = np.asarray(crow, "<i8").tobytes()
    weights.sparse_csr.col_indices = np.asarray(cols, "<i8").tobytes()


@pytest.mark.parametrize(
    "spoil,field,text",
    [
        (
            lambda m: setattr(m.data[0].model_input[0].encoded_text, "tokens", b"\x01\x00\x00\x00\x02"),
            "data[0].model_input.chunks[0].tokens",
            "has 5 bytes, not a whole number of 4-byte elements",
        ),
        (
            lambda m: setattr(m.data[0].loss_fn_inputs["weights"], "dense", b"\x00" * 6),
            "data[0].loss_fn_inputs.weights.data",
            "has 6 bytes",
        ),
        (
            lambda m: _sparse_weights(m, [8], [0, 1], [0]),
            "data[0].loss_fn_inputs.weights.sparse_csr",
            "needs a 2-D shape",
        ),
        (
            lambda m: _sparse_weights(m, [8, 2], [0] + [1] * 8, [5]),
            "data[0].loss_fn_inputs.weights.sparse_csr.col_indices",
            "must lie in [0, 2)",
        ),
        (
            lambda m: _sparse_weights(m, [8, 2], [0, 2, 1, 1, 1, 1, 1, 1, 1], [0]),
            "data[0].loss_fn_inputs.weights.sparse_csr.crow_indices",
            "9 non-decreasing offsets from 0",
        ),
        (
            lambda m: m.data[0].model_input.add().image.SetInParent(),
            "data[0].model_input.chunks[1]",
            "only encoded_text chunks are supported",
        ),
    ],
    ids=["tokens-bytes", "weights-bytes", "csr-1d", "csr-column", "csr-rows", "image-chunk"],
)
def test_malformed_binary_is_refused_naming_the_place_and_uses_up_the_seq(api, two_models, spoil, field, text):
    message = _message(proto_body(Wire.forward_backward_body(two_models[1], 1)))
    spoil(message)
    refused = post_proto(api, "forward_backward", message.SerializeToString())
    assert refused.status_code == 400, refused.content
    assert refused.json()["field"] == field and text in refused.json()["error"]
    assert refused.json()["consumed_seq_id"] == 1
    assert Operation.objects.get(training_run_id=two_models[1], seq_id=1).status == Operation.Status.REJECTED


def test_bytes_that_are_not_a_request_or_not_zstd_are_refused(api, two_models):
    garbage = post_proto(api, "forward_backward", b"\xff\xff\xff")
    assert garbage.status_code == 400 and garbage.json()["field"] == "body"
    not_zstd = post_proto(api, "forward_backward", b"plain", HTTP_CONTENT_ENCODING="zstd")
    assert not_zstd.status_code == 400 and "zstd" in not_zstd.json()["error"]
    assert not Operation.objects.filter(training_run_id__in=two_models, seq_id__gte=1).exists()


def test_other_endpoints_answer_415_to_protobuf(api, two_models):
    refused = post_proto(api, "optim_step", b"")
    assert refused.status_code == 415 and refused.json()["field"] == "Content-Type"
