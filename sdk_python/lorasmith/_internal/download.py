"""Downloading signed URLs: resumable (a `.part` file continued with `Range`, also across calls),
size- and checksum-verified (`X-Checksum-Sha256`), with an optional tqdm progress bar."""

from __future__ import annotations

import hashlib
import re
import time
from pathlib import Path

import httpx
from tqdm import tqdm

from ..errors import APIConnectionError, LorasmithError, PermissionDeniedError

ATTEMPTS = 5
CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+)$")


def download(url: str, target: Path, progress: bool = False, timeout: float = 60.0) -> Path:
    """Fetch `url` into `target`; a dropped connection resumes where it stopped."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    for attempt in range(ATTEMPTS):
        try:
            expected = _fetch(url, partial, progress, timeout)
            break
        except httpx.TransportError as error:
            if attempt + 1 == ATTEMPTS:
                raise APIConnectionError(
                    f"download of {target.name} kept failing ({error}); run it again to resume from {partial}"
                ) from error
            time.sleep(min(0.5 * 2**attempt, 10.0))
    if expected and _sha256(partial) != expected:
        partial.unlink()
        raise LorasmithError(f"{target.name}: checksum mismatch; the partial file was removed, try again")
    partial.replace(target)
    return target


def _fetch(url: str, partial: Path, progress: bool, timeout: float) -> str | None:
    """Append the rest of the file to `partial`; returns the server's checksum (None if it sends none)."""
    offset = partial.stat().st_size if partial.exists() else 0
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    with httpx.stream("GET", url, headers=headers, timeout=timeout, follow_redirects=True) as response:
        if response.status_code == 403:
            raise PermissionDeniedError(f"download link refused (expired or invalid): {response.read().decode()}", 403)
        if response.status_code == 416:  # our .part is not a prefix of this file: start over
            partial.unlink()
            return _fetch(url, partial, progress, timeout)
        response.raise_for_status()
        content_range = CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
        if response.status_code == 206 and content_range and int(content_range[1]) == offset:
            total = int(content_range[3])
        else:  # the server ignored Range: start over
            offset = 0
            total = int(response.headers.get("Content-Length", 0))
        bar = _bar(total, offset, partial.name.removesuffix(".part")) if progress else None
        try:
            with open(partial, "ab" if offset else "wb") as f:
                for block in response.iter_bytes():  # as received, so a cut keeps what arrived
                    f.write(block)
                    if bar is not None:
                        bar.update(len(block))
        finally:
            if bar is not None:
                bar.close()
        size = partial.stat().st_size
        if total and size != total:
            raise httpx.ReadError(f"got {size} of {total} bytes")  # resumable, like a dropped connection
        return response.headers.get("X-Checksum-Sha256")


def _bar(total: int, initial: int, name: str) -> tqdm:
    return tqdm(total=total or None, initial=initial, unit="B", unit_scale=True, desc=name)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
