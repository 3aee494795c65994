"""Signed file downloads: no API key, just an unexpired, untampered token. Supports `Range`
(resumable downloads) and sends `X-Checksum-Sha256` so clients can verify what they got."""

from __future__ import annotations

import re

from django.http import FileResponse, JsonResponse

from training import storage

from .errors import error_body

RANGE = re.compile(r"^bytes=(\d+)-$")


def signed_file(request, token: str, filename: str):
    granted = storage.open_signed(token)
    if granted is None or granted[1] != filename:
        return JsonResponse(error_body("this download link is invalid or has expired"), status=403)
    path, name = granted
    size = path.stat().st_size
    checksum = storage.sha256(path)
    match = RANGE.match(request.headers.get("Range", ""))
    if match and int(match[1]) < size:
        start = int(match[1])
        handle = open(path, "rb")  # noqa: SIM115 - FileResponse closes it
        handle.seek(start)  # streamed from here; FileResponse sets Content-Length to what is left
        response = FileResponse(handle, status=206, content_type="application/octet-stream")
        response["Content-Range"] = f"bytes {start}-{size - 1}/{size}"
    else:
        response = FileResponse(open(path, "rb"), as_attachment=True, filename=name)  # noqa: SIM115
    response["Accept-Ranges"] = "bytes"
    response["X-Checksum-Sha256"] = checksum
    return response
