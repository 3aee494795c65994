"""The protobuf input boundary: a `forward_backward` body sent as `application/x-protobuf` (maybe
`Content-Encoding: zstd`), as Tinker's SDK sends it (TINKER_WIRE.md §4.3), becomes the JSON-shaped
body the JSON path parses, and then passes the same checks as a JSON body (`request_json.check`,
then intake). So a request is refused with the same 400, naming the same field, whichever encoding
it came in.

What only the binary form can get wrong is refused here, naming the place: bytes that are not a
`ForwardBackwardRequest`; a compressed body that does not decompress, or decompresses past the body
limit; arrays whose byte count is not a whole number of elements; a sparse CSR tensor whose indices
do not describe its shape. Sparse tensors are densified (unlisted cells are 0); int32 token bytes
become lists of ints.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import zstandard
from django.conf import settings
from google.protobuf.message import DecodeError

from training import wire
from training.errors import BadRequest, TooLarge

from . import request_json
from .tinker_proto import ForwardBackwardRequest

# proto dtype number -> (TensorData dtype name, little-endian numpy dtype); names other than
# float32/int64 pass through, for intake to refuse with the message a JSON body gets
DTYPES = {1: ("float32", "<f4"), 2: ("int64", "<i8"), 3: ("int32", "<i4"), 4: ("bfloat16", "<u2")}


def forward_backward_body(raw: bytes, content_encoding: str = "") -> dict:
    """The JSON-shaped body of a protobuf `ForwardBackwardRequest`, checked like a JSON one."""
    message = _parse(raw, content_encoding)
    body: dict[str, Any] = {
        "data": [_datum(d, f"data[{i}]") for i, d in enumerate(message.data)],
        "loss_fn_config": dict(message.loss_fn_config),
        "loss_fn_config_v2": {
            key: {value.WhichOneof("value"): getattr(value, value.WhichOneof("value"))}
            for key, value in message.loss_fn_config_v2.items()
            if value.WhichOneof("value")
        },
        "forward_only": message.forward_only,
    }
    # proto3 cannot tell an unset scalar from its zero: those count as absent, as in JSON
    for key in ("model_id", "seq_id", "loss_fn"):
        if getattr(message, key):
            body[key] = getattr(message, key)
    request_json.check(body)
    return body


def claimed_sequence(raw: bytes, content_encoding: str = "") -> tuple[str, int] | None:
    """The (model_id, seq_id) of a refused protobuf body, when it parses far enough to name them."""
    try:
        message = _parse(raw, content_encoding)
    except BadRequest:
        return None
    return (message.model_id, message.seq_id) if message.model_id and message.seq_id >= 1 else None


def _parse(raw: bytes, content_encoding: str) -> Any:
    encoding = content_encoding.strip().lower()
    if encoding == "zstd":
        raw = _decompress(raw)
    elif encoding not in ("", "identity"):
        raise BadRequest(f"Content-Encoding {content_encoding!r} is not supported; use zstd", field="Content-Encoding")
    message = ForwardBackwardRequest()
    try:
        message.ParseFromString(raw)
    except DecodeError as error:
        raise BadRequest(f"body is not a protobuf ForwardBackwardRequest: {error}", field="body") from None
    return message


def _decompress(raw: bytes) -> bytes:
    limit = settings.LORASMITH.max_body_bytes
    try:
        data = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(raw)).read(limit + 1)
    except zstandard.ZstdError as error:
        raise BadRequest(f"body is not valid zstd: {error}", field="body") from None
    if len(data) > limit:
        raise TooLarge(f"request body exceeds {limit} bytes once decompressed", field="body")
    return data


def _datum(datum: Any, where: str) -> dict:
    return {
        "model_input": {
            "chunks": [_chunk(c, f"{where}.model_input.chunks[{i}]") for i, c in enumerate(datum.model_input)]
        },
        "loss_fn_inputs": {
            name: _tensor(tensor, f"{where}.loss_fn_inputs.{name}") for name, tensor in datum.loss_fn_inputs.items()
        },
    }


def _chunk(chunk: Any, where: str) -> dict:
    kind = chunk.WhichOneof("chunk")
    if kind == "encoded_text":
        return {"type": "encoded_text", "tokens": _array(chunk.encoded_text.tokens, "<i4", f"{where}.tokens").tolist()}
    return {"type": kind}  # image, dmel or none: the JSON check refuses them by their place


def _tensor(tensor: Any, where: str) -> dict:
    name, numpy_dtype = DTYPES.get(tensor.dtype, (None, None))
    if numpy_dtype is None:
        return {"data": [], "dtype": name}
    shape = list(tensor.shape)
    if tensor.WhichOneof("encoding") == "sparse_csr":
        values = _densify(tensor.sparse_csr, shape, numpy_dtype, f"{where}.sparse_csr")
    else:
        values = _array(tensor.dense, numpy_dtype, f"{where}.data")
    if values.dtype.kind == "f" and not np.isfinite(values).all():
        raise request_json.not_finite(f"{where}.data[{int(np.argmin(np.isfinite(values)))}]")
    data = values.tolist()
    return {"data": data, "dtype": name, "shape": shape} if shape else {"data": data, "dtype": name}


def _array(raw: bytes, numpy_dtype: str, where: str) -> np.ndarray:
    itemsize = np.dtype(numpy_dtype).itemsize
    if len(raw) % itemsize:
        raise BadRequest(f"{where} has {len(raw)} bytes, not a whole number of {itemsize}-byte elements", field=where)
    return np.frombuffer(raw, dtype=numpy_dtype)


def _densify(csr: Any, shape: list[int], numpy_dtype: str, where: str) -> np.ndarray:
    """A CSR matrix as its dense row-major values (unlisted cells 0)."""
    values = _array(csr.values, numpy_dtype, f"{where}.values")
    crow = _array(csr.crow_indices, "<i8", f"{where}.crow_indices")
    cols = _array(csr.col_indices, "<i8", f"{where}.col_indices")
    return wire.densify_csr(values, crow, cols, shape, 0, where, ("crow_indices", "col_indices"))
