"""Where checkpoint files live, and signed, expiring URLs that serve them without an API key."""

from __future__ import annotations

import functools
import hashlib
import re
import shutil
import tarfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from django.conf import settings
from django.core import signing

from .base_models import info, served_models

SALT = "lorasmith.files"


VERSION_PREFIX = "v-"  # a checkpoint name starts with a letter or digit, so never with this
ARCHIVE_SUFFIX = ".archive"


def _run_root(owner_id: int, run_id: str) -> Path:
    safe_run = re.sub(r"[^A-Za-z0-9._-]", "_", run_id)
    return settings.DATA_DIR / "checkpoints" / str(owner_id) / safe_run


def checkpoint_directory(owner_id: int, run_id: str, kind: str, name: str) -> Path:
    """A fresh directory for one save of checkpoint `name`: `<kind>/<name>/v-<random>/`.

    Every save, a new name or an overwrite, writes a version of its own, and the Checkpoint row
    switches to it (one database update) only once the save has finished; the version it replaced
    goes afterwards (`drop_replaced`). So a save killed midway leaves the old version listed and
    whole, never a mixture of two steps' files; and a checkpoint's files and archive live inside its
    own `<name>/` folder, where no other name's (`X.tar` next to `X`) can reach."""
    return _run_root(owner_id, run_id) / kind / name / f"{VERSION_PREFIX}{uuid.uuid4().hex}"


def ephemeral_sampler_directory(owner_id: int, run_id: str, seq_id: int) -> Path:
    """Written once per seq (never overwritten), so it needs no versions."""
    return _run_root(owner_id, run_id) / "ephemeral" / f"seq-{seq_id}"


def is_version(directory: Path) -> bool:
    return Path(directory).name.startswith(VERSION_PREFIX)


def drop_replaced(old: Path | str, new: Path | str) -> None:
    """After a checkpoint's row moved from version `old` to `new`: the old version's files and
    archive go (a checkpoint saved before versions existed is overwritten in place: only its
    stale archive goes)."""
    old, new = Path(old), Path(new)
    if old == new or not is_version(old):
        discard_archive(new)
        return
    shutil.rmtree(old, ignore_errors=True)
    discard_archive(old)


def remove_checkpoint_files(directory: Path | str) -> None:
    """A deleted checkpoint's files: every version of its name (also one a killed save left
    behind) with their archives; for a checkpoint saved before versions existed, its directory and
    archive."""
    directory = Path(directory)
    if is_version(directory):
        shutil.rmtree(directory.parent, ignore_errors=True)
    else:
        shutil.rmtree(directory, ignore_errors=True)
        discard_archive(directory)


TOKENIZER_FILE_PREFIXES = ("tokenizer", "special_tokens", "chat_template", "vocab", "merges")


def tokenizer_files(model_dir: Path) -> list[Path]:
    """The files of a local model directory a client needs to load its tokenizer."""
    return [f for f in sorted(model_dir.iterdir()) if f.name.startswith(TOKENIZER_FILE_PREFIXES)]


def sign_file(path: Path, seconds: int | None = None) -> tuple[str, datetime]:
    """A token for `path` (under a `servable_roots` directory) valid for `seconds`; returns (token, expiry)."""
    seconds = seconds or settings.LORASMITH.signed_url_seconds
    expires = int(time.time()) + seconds
    token = signing.dumps({"p": str(Path(path).resolve()), "e": expires}, salt=SALT, compress=True)
    return token, datetime.fromtimestamp(expires, tz=UTC)


def servable_roots() -> list[Path]:
    """Where signed URLs may point: checkpoints, and the directories of served local base models
    (for their tokenizer files). Never the rest of the data dir (database, secret key)."""
    roots = [(settings.DATA_DIR / "checkpoints").resolve()]
    for name in served_models():
        directory = Path(info(name).model_dir)
        if directory.is_dir():
            roots.append(directory.resolve())
    return roots


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
    path = Path(claim["p"]).resolve()
    if not path.is_file() or not any(root in path.parents for root in servable_roots()):
        return None
    return path


@functools.lru_cache(maxsize=1024)
def _sha256(path: str, mtime_ns: int, size: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256(path: Path) -> str:
    """Hashed once per file version, not on every (resumed) download."""
    stat = Path(path).stat()
    return _sha256(str(path), stat.st_mtime_ns, stat.st_size)


def archive_path(directory: Path) -> Path:
    """Where the `.tar` of a checkpoint directory lives: for a version, `<name>/v-<id>.archive/<name>.tar`
    (downloaded as `<name>.tar`, inside the checkpoint's own folder); for a directory from before
    versions, next to it."""
    directory = Path(directory)
    if is_version(directory):
        return directory.with_name(directory.name + ARCHIVE_SUFFIX) / f"{directory.parent.name}.tar"
    return directory.with_name(directory.name + ".tar")


def archive_of(directory: Path) -> Path:
    """A `.tar` of a checkpoint directory, built once (again after the checkpoint is overwritten,
    see `discard_archive`); concurrent builders each write their own part file."""
    directory = Path(directory)
    target = archive_path(directory)
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.{uuid.uuid4().hex}.part")
        with tarfile.open(partial, "w") as tar:
            for file in sorted(directory.iterdir()):
                tar.add(file, arcname=file.name)
        partial.replace(target)
    return target


def discard_archive(directory: Path) -> None:
    archive = archive_path(directory)
    if is_version(directory):
        shutil.rmtree(archive.parent, ignore_errors=True)
    else:
        archive.unlink(missing_ok=True)
