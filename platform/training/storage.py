"""Where checkpoint files live, and signed, expiring URLs that serve them without an API key."""
from __future__ import annotations

import hashlib
import re
import tarfile
import time
from datetime import datetime, timezone as dt_timezone
from pathlib import Path

from django.conf import settings
from django.core import signing

SALT = "lorasmith.files"


def checkpoint_directory(owner_id: int, run_id: str, kind: str, name: str) -> Path:
    safe_run = re.sub(r"[^A-Za-z0-9._-]", "_", run_id)
    return settings.DATA_DIR / "checkpoints" / str(owner_id) / safe_run / kind / name


def internal_sampler_directory(owner_id: int, run_id: str, seq_id: int) -> Path:
    return checkpoint_directory(owner_id, run_id, "ephemeral", f"seq-{seq_id}")


def sign_file(path: Path, seconds: int | None = None) -> tuple[str, datetime]:
    """A token for `path` (relative to the data dir) valid for `seconds`; returns (token, expiry)."""
    seconds = seconds or settings.LORASMITH["SIGNED_URL_SECONDS"]
    expires = int(time.time()) + seconds
    relative = str(Path(path).resolve().relative_to(settings.DATA_DIR))
    token = signing.dumps({"p": relative, "e": expires}, salt=SALT, compress=True)
    return token, datetime.fromtimestamp(expires, tz=dt_timezone.utc)


def signed_url(request, path: Path, seconds: int | None = None) -> tuple[str, datetime]:
    token, expires = sign_file(path, seconds)
    return request.build_absolute_uri(f"/files/{token}/{Path(path).name}"), expires


def open_signed(token: str) -> Path | None:
    """The file a token grants, or None when it is tampered with, expired or gone."""
    try:
        claim = signing.loads(token, salt=SALT)
    except signing.BadSignature:
        return None
    if claim.get("e", 0) < time.time():
        return None
    path = (settings.DATA_DIR / claim["p"]).resolve()
    if settings.DATA_DIR not in path.parents or not path.is_file():
        return None
    return path


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def archive_path(directory: Path) -> Path:
    """Where the `.tar` of a checkpoint directory lives: next to it."""
    directory = Path(directory)
    return directory.with_name(directory.name + ".tar")


def archive_of(directory: Path) -> Path:
    """A `.tar` of a checkpoint directory, built once."""
    directory = Path(directory)
    target = archive_path(directory)
    if not target.exists():
        partial = target.with_suffix(".tar.part")
        with tarfile.open(partial, "w") as tar:
            for file in sorted(directory.iterdir()):
                tar.add(file, arcname=file.name)
        partial.rename(target)
    return target
