"""Downloading signed URLs: resumable (a `.part` file continued with `Range`), size- and
checksum-verified (`X-Checksum-Sha256`), with an optional tqdm progress bar."""
from __future__ import annotations

import hashlib
from pathlib import Path

import httpx

from ..errors import LorasmithError


def download(url: str, target: Path, progress: bool = False, timeout: float = 60.0) -> Path:
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    offset = partial.stat().st_size if partial.exists() else 0
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    with httpx.stream("GET", url, headers=headers, timeout=timeout, follow_redirects=True) as response:
        if response.status_code == 403:
            raise LorasmithError(f"download link refused (expired or invalid): {response.text}")
        response.raise_for_status()
        if response.status_code != 206:  # the server ignored Range: start over
            offset = 0
        total = offset + int(response.headers.get("Content-Length", 0))
        expected = response.headers.get("X-Checksum-Sha256")
        bar = _bar(total, offset, target.name) if progress else None
        with open(partial, "ab" if offset else "wb") as f:
            for block in response.iter_bytes(1 << 20):
                f.write(block)
                if bar is not None:
                    bar.update(len(block))
        if bar is not None:
            bar.close()
    if total and partial.stat().st_size != total:
        raise LorasmithError(f"{target.name}: got {partial.stat().st_size} bytes, expected {total}")
    if expected and _sha256(partial) != expected:
        partial.unlink()
        raise LorasmithError(f"{target.name}: checksum mismatch; the partial file was removed, try again")
    partial.replace(target)
    return target


def _bar(total: int, initial: int, name: str):
    from tqdm import tqdm

    return tqdm(total=total or None, initial=initial, unit="B", unit_scale=True, desc=name)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
