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
from typing import Any, BinaryIO

import numpy as np
import zstandard
from django.conf import settings
from google.protobuf.message import DecodeError

from training import wire
from training.errors import BadRequest, TooLarge
from training.intake import request_bounds

from . import request_json
from .tinker_proto import ForwardBackwardRequest

# proto dtype number -> (TensorData dtype name, little-endian numpy dtype); names other than
# float32/int64 pass through, for intake to refuse with the message a JSON body gets
CLAIM_FIELD_BYTES = 4096  # a model_id is far shorter
DTYPES = {1: ("float32", "<f4"), 2: ("int64", "<i8"), 3: ("int32", "<i4"), 4: ("bfloat16", "<u2")}


def forward_backward_body(raw: bytes, content_encoding: str = "") -> dict:
    """The JSON-shaped body of a protobuf `ForwardBackwardRequest`, checked like a JSON one."""
    message = _parse(raw, content_encoding)
    request_bounds.check_training(*_cost(message))  # before any tensor is densified or listed
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


def claimed_sequence(stream: BinaryIO, content_encoding: str = "") -> tuple[str, int] | None:
    """The (model_id, seq_id) of a refused protobuf body, when it reads far enough to name them.
    Only the message's top-level fields are walked, a chunk at a time (the tensors in between are
    skipped unread), so a body over the limit, or a zstd body that decompresses past it, still
    names the seq_id it uses up."""
    encoding = content_encoding.strip().lower()
    if encoding == "zstd":
        stream = zstandard.ZstdDecompressor().stream_reader(stream)
    elif encoding not in ("", "identity"):
        return None
    try:
        fields = _top_level_fields(stream, wanted={1: "model_id", 2: "seq_id"})
    except (zstandard.ZstdError, UnicodeDecodeError, EOFError):
        return None
    model_id, seq_id = fields.get("model_id"), fields.get("seq_id")
    if isinstance(model_id, bytes) and isinstance(seq_id, int) and 1 <= seq_id < 2**31:
        return model_id.decode("utf-8"), seq_id
    return None


def _top_level_fields(stream: BinaryIO, wanted: dict[int, str]) -> dict[str, int | bytes]:
    """The first value of each wanted top-level field (varints as ints, length-delimited ones up to
    CLAIM_FIELD_BYTES as bytes), read in protobuf's wire format without decoding anything else."""
    found: dict[str, int | bytes] = {}
    scanned = 0
    while len(found) < len(wanted) and scanned <= request_json.CLAIM_SCAN_LIMIT:
        tag = _tag(stream)
        if tag is None:
            break
        name, wire_type = wanted.get(tag >> 3), tag & 7
        if wire_type == 0:
            value = _varint(stream)
            if name is not None:
                found.setdefault(name, value)
        elif wire_type == 2:
            length = _varint(stream)
            if name is not None and length <= CLAIM_FIELD_BYTES:
                found.setdefault(name, _read_exactly(stream, length))
            else:
                _skip(stream, length)
            scanned += length
        elif wire_type in (1, 5):
            _skip(stream, 8 if wire_type == 1 else 4)
        else:
            break  # groups or garbage: no claim past here
    return found


def _tag(stream: BinaryIO) -> int | None:
    """The next field's tag, or None at the clean end of the message."""
    first = stream.read(1)
    if not first:
        return None
    return _varint(stream, first)


def _varint(stream: BinaryIO, first: bytes = b"") -> int:
    value = shift = 0
    while True:
        byte = first or stream.read(1)
        first = b""
        if not byte:
            raise EOFError("truncated varint")
        value |= (byte[0] & 0x7F) << shift
        if byte[0] < 0x80:
            return value
        shift += 7
        if shift > 63:
            raise EOFError("varint too long")


def _read_exactly(stream: BinaryIO, length: int) -> bytes:
    data = stream.read(length)
    if len(data) != length:
        raise EOFError("truncated field")
    return data


def _skip(stream: BinaryIO, length: int) -> None:
    while length > 0:
        chunk = stream.read(min(length, request_json.CLAIM_CHUNK_BYTES))
        if not chunk:
            raise EOFError("truncated field")
        length -= len(chunk)


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


def _cost(message: Any) -> tuple[int, int]:
    """(decoded bytes, tokens) the message declares: token bytes, dense tensors' bytes, sparse
    tensors' dense shape at their dtype's size; read from lengths and shapes, nothing decoded."""
    decoded = tokens = 0
    for datum in message.data:
        for chunk in datum.model_input:
            if chunk.WhichOneof("chunk") == "encoded_text":
                tokens += len(chunk.encoded_text.tokens) // request_bounds.TOKEN_BYTES
        for tensor in datum.loss_fn_inputs.values():
            itemsize = np.dtype(DTYPES.get(tensor.dtype, (None, "<i8"))[1]).itemsize
            if tensor.WhichOneof("encoding") == "sparse_csr":
                decoded += request_bounds.dense_bytes(list(tensor.shape), itemsize)
            else:
                decoded += len(tensor.dense)
    return decoded + tokens * request_bounds.TOKEN_BYTES, tokens


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
