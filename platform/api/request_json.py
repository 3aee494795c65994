"""The one input boundary for JSON: request bodies and WebSocket frames are parsed here, and
only what the rest of the service can store and compute with gets through.

Refused with a 400 that names the offending place (`data[0].loss_fn_inputs.weights.data[3]`):
text that is not UTF-8 or not JSON; NaN and Infinity (not JSON, though Python's parser takes
them) and numbers too large to be finite; integers outside 64 bits (no column or tensor holds
them); strings with lone surrogates (they cannot be encoded) or NUL (PostgreSQL cannot store it);
nesting deeper than MAX_DEPTH.
"""

from __future__ import annotations

import io
import itertools
import json
import math
import re
from collections.abc import Iterable
from typing import Any, BinaryIO

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest

from training.errors import BadRequest, TooLarge
from training.wire import NUMBER

MAX_DEPTH = 32  # the deepest real body (forward_backward: data[i].loss_fn_inputs.x.data) is 5 deep
INT64 = (-(2**63), 2**63 - 1)
CLAIM_PATTERNS = (("model_id", r'"model_id"\s*:\s*"([^"\\]+)"'), ("seq_id", r'"seq_id"\s*:\s*(\d{1,19})\b'))
CLAIM_CHUNK_BYTES = 1 << 20
CLAIM_OVERLAP_BYTES = 512  # longer than any claim key with its value
CLAIM_SCAN_LIMIT = 4 << 30  # an oversized body is searched this far for its claim, then given up


def read_body(request: HttpRequest) -> bytes:
    """The raw body, or a 413 naming the limit when it is larger than the server accepts."""
    try:
        return request.body
    except RequestDataTooBig:
        raise TooLarge(f"request body exceeds {settings.LORASMITH.max_body_bytes} bytes", field="body") from None


def parse(raw: bytes | str, field: str = "body") -> Any:
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise BadRequest(f"{field} is not valid UTF-8: {error.reason} at byte {error.start}", field=field) from None
    try:
        value = json.loads(raw, parse_constant=lambda _: NON_FINITE)
    except RecursionError:
        raise BadRequest(f"{field} is nested more than {MAX_DEPTH} levels deep", field=field) from None
    except ValueError as error:
        raise BadRequest(f"{field} is not valid JSON: {error}", field=field) from None
    check(value, field)
    return value


def parse_object(raw: bytes | str, field: str = "body") -> dict:
    """A JSON object (an empty body counts as `{}`)."""
    value = parse(raw or "{}", field)
    if not isinstance(value, dict):
        raise BadRequest(f"{field} must be a JSON object", field=field)
    return value


def body_stream(request: Any) -> BinaryIO:
    """The body as a stream from its start, also a body too large for `request.body` (Django
    refuses that one before reading it; the server has buffered it all the same), so a refusal
    can still read the seq_id it claims, a chunk at a time."""
    django_request = getattr(request, "_request", request)  # DRF's Request wraps Django's
    if hasattr(django_request, "_body"):
        return io.BytesIO(django_request._body)
    stream = django_request._stream
    if stream.seekable():
        stream.seek(0)
    return stream


def claimed_sequence(stream: BinaryIO) -> tuple[str, int] | None:
    """The (model_id, seq_id) that a refused training body claims, read leniently (Python's own
    parser takes NaN and any integer; a body even that cannot read is searched for the two keys,
    and one over the body limit is searched a chunk at a time, never held whole), so the refusal
    can still use up that seq_id. None when the body names no valid pair."""
    raw = stream.read(settings.LORASMITH.max_body_bytes + 1)
    if len(raw) <= settings.LORASMITH.max_body_bytes:
        text = raw.decode("utf-8", errors="replace")
        try:
            body = json.loads(text)
        except (ValueError, RecursionError):
            body = _search_claims([raw])
    else:
        body = _search_claims(itertools.chain([raw], iter(lambda: stream.read(CLAIM_CHUNK_BYTES), b"")))
    if not isinstance(body, dict):
        return None
    model_id, seq_id = body.get("model_id"), body.get("seq_id")
    if isinstance(seq_id, str) and seq_id.isdigit():
        seq_id = int(seq_id)
    if not isinstance(model_id, str) or isinstance(seq_id, bool) or not isinstance(seq_id, int):
        return None
    return (model_id, seq_id) if 1 <= seq_id <= INT64[1] else None


def _search_claims(chunks: Iterable[bytes]) -> dict:
    """The first value of each claim key in a stream of body chunks (a key split across two chunks
    is found too: each search overlaps the previous chunk's tail), stopping once both are found or
    after CLAIM_SCAN_LIMIT bytes."""
    found: dict[str, str] = {}
    tail, scanned = b"", 0
    for chunk in chunks:
        text = (tail + chunk).decode("utf-8", errors="replace")
        for key, pattern in CLAIM_PATTERNS:
            match = re.search(pattern, text) if key not in found else None
            if match:
                found[key] = match.group(1)
        scanned += len(chunk)
        if len(found) == len(CLAIM_PATTERNS) or scanned > CLAIM_SCAN_LIMIT:
            break
        tail = chunk[-CLAIM_OVERLAP_BYTES:]
    return found


class _NonFinite:
    """What NaN, Infinity and -Infinity parse to: refused by the walk, which knows their place."""


NON_FINITE = _NonFinite()


def check(root: Any, field: str = "body") -> None:
    """Refuse what the rest of the service cannot store (see the module docstring); also run on
    bodies decoded from protobuf. Walks the value without recursion (its depth is what is being
    checked). Paths are built only for containers and for the offending value: bodies hold long
    lists of numbers."""
    if not isinstance(root, dict | list):
        if not _scalar_ok(root):
            _refuse(root, field)
        return
    stack: list[tuple[Any, str, int]] = [(root, field, 0)]
    while stack:
        value, path, depth = stack.pop()
        if depth >= MAX_DEPTH:
            raise BadRequest(f"{field} is nested more than {MAX_DEPTH} levels deep", field=path)
        if isinstance(value, list) and _numbers_in_range(value):
            continue  # the common case, tokens and tensor data, checked by its extremes
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            if isinstance(key, str):
                _check_string(key, _child(path, key))
            if isinstance(item, dict | list):
                stack.append((item, _child(path, key), depth + 1))
            elif not _scalar_ok(item):
                _refuse(item, _child(path, key))


def _numbers_in_range(values: list) -> bool:
    if not values or not set(map(type, values)) <= NUMBER:  # one C pass; a bool is not a number here
        return False
    return _scalar_ok(min(values)) and _scalar_ok(max(values))


def _child(path: str, key: object) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    printable = str(key).encode("utf-8", "backslashreplace").decode()  # a key may hold a lone surrogate
    return printable if path == "body" else f"{path}.{printable}"


def _scalar_ok(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" not in value and not _has_surrogate(value)
    if isinstance(value, bool) or value is None:
        return True
    if isinstance(value, int):
        return INT64[0] <= value <= INT64[1]
    return isinstance(value, float) and math.isfinite(value)


def _has_surrogate(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _refuse(value: Any, path: str) -> None:
    if isinstance(value, str):
        _check_string(value, path)
    if isinstance(value, int):
        raise BadRequest(f"{path} is outside the 64-bit integer range", field=path)
    raise not_finite(path)


def not_finite(path: str) -> BadRequest:
    return BadRequest(f"{path} must be a finite number (JSON has no NaN or Infinity)", field=path)


def _check_string(value: str, path: str) -> None:
    if "\x00" in value:
        raise BadRequest(f"{path} contains a NUL character, which cannot be stored", field=path)
    if _has_surrogate(value):
        raise BadRequest(f"{path} contains a lone UTF-16 surrogate (invalid Unicode)", field=path)
