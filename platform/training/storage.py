"""Where checkpoint files live, and expiring URLs that serve them without an API key.

A row (Checkpoint.directory, SamplingSession.weights_dir, Snapshot.directory, a load's payload)
records a *location*: the directory's path with local files (the default), its key in the object
store otherwise (the same in every process, whatever its data dir). The engine always reads and
writes a local directory: `publish` uploads what a save wrote, `fetch` brings a stored directory
into this process's cache before a load (see object_store).
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import shutil
import tarfile
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

from django.conf import settings
from django.core import signing

from . import object_store
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


def is_version(location: Path | str) -> bool:
    return PurePosixPath(str(location)).name.startswith(VERSION_PREFIX)


def key_of(location: Path | str) -> str:
    """A location's key in the store: its path under the data dir."""
    path = Path(location)
    return (path.relative_to(settings.DATA_DIR) if path.is_absolute() else path).as_posix()


def local_directory(location: Path | str) -> Path:
    """Where this process keeps a location's files (an absolute location is its own path)."""
    return settings.DATA_DIR / location


def publish(directory: Path | str, archive: bool = False) -> str:
    """After the engine wrote `directory` (a save's version, a sampler's weights, a snapshot): its
    files go to the store; returns the location a row records. With a remote store each file is
    uploaded (streamed), and a downloadable checkpoint's `.tar` is built here and uploaded as its
    own object; the local copy stays as this process's cache. With local files nothing moves."""
    directory = Path(directory)
    if not object_store.is_remote():
        return str(directory)
    key = key_of(directory)
    for file in sorted(directory.iterdir()):
        if file.is_file():
            object_store.upload(file, f"{key}/{file.name}")
    if archive:
        _upload_archive(directory)
    _cached_marker(directory).touch()
    return key


def fetch(location: Path | str) -> Path:
    """The local directory holding a location's files, for the engine to read. With a remote store
    they are downloaded into this process's cache (under the data dir, by key) unless a whole copy
    is there already; stored directories never change (a save writes a new version), so a cached
    copy never goes stale."""
    directory = local_directory(location)
    if not object_store.is_remote() or _used(directory):
        return directory
    key = key_of(location)
    names = object_store.files(key)
    if not names:
        raise FileNotFoundError(f"{key} is not in the object store")
    directory.parent.mkdir(parents=True, exist_ok=True)
    partial = directory.with_name(f".{directory.name}.{uuid.uuid4().hex}.part")
    partial.mkdir()
    try:
        for name in names:
            object_store.download(f"{key}/{name}", partial / name)
        shutil.rmtree(directory, ignore_errors=True)
        partial.rename(directory)
    except OSError:
        if not directory.is_dir():  # unless a concurrent fetch of the same key got there first
            raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    _cached_marker(directory).touch()
    return directory


CACHED_SUFFIX = ".cached"
CACHE_IDLE_SECONDS = 600.0  # a copy used this recently is never evicted: a load may still be reading it


def _cached_marker(directory: Path) -> Path:
    """Next to a directory: its local copy is whole (written by `publish` or `fetch`); its time is
    when the copy was last used (`trim_cache` evicts the least recently used first)."""
    return directory.with_name(directory.name + CACHED_SUFFIX)


def _used(directory: Path) -> bool:
    """Whether a whole local copy of `directory` is cached; if so it is marked as used now."""
    try:
        os.utime(_cached_marker(directory))
    except FileNotFoundError:
        return False
    return directory.is_dir()


def trim_cache(max_bytes: int, idle_seconds: float = CACHE_IDLE_SECONDS) -> int:
    """With an object store, the local copies of stored directories (`publish`, `fetch`) are only a
    cache, and without a bound a long-lived runner's disk fills: with copies of what other
    processes deleted since, and of every run it ever took over. Beyond `max_bytes` the least
    recently used go, among those idle for `idle_seconds`; the store keeps their files, and a later
    `fetch` brings one back. Returns the bytes freed."""
    root = settings.DATA_DIR / "checkpoints"
    if not object_store.is_remote() or not root.is_dir():
        return 0
    copies: list[tuple[float, int, Path]] = []
    for marker in root.rglob(f"*{CACHED_SUFFIX}"):
        directory = marker.with_name(marker.name.removesuffix(CACHED_SUFFIX))
        try:
            used = marker.stat().st_mtime
            size = sum(f.stat().st_size for f in directory.iterdir() if f.is_file())
        except FileNotFoundError:  # evicted or removed meanwhile by another process
            continue
        copies.append((used, size, directory))
    held = sum(size for _, size, _ in copies)
    freed = 0
    idle_before = time.time() - idle_seconds
    for used, size, directory in sorted(copies, key=lambda copy: copy[0]):
        if held - freed <= max_bytes or used > idle_before:  # the rest were used more recently still
            break
        if _evict(directory, idle_before):
            freed += size
    return freed


def _evict(directory: Path, idle_before: float) -> bool:
    """The marker first (a fetch from now on downloads afresh), unless the copy was used since it
    was listed; then the files, moved aside in one rename so a fetch renaming a new copy into place
    never meets a half-deleted one."""
    marker = _cached_marker(directory)
    try:
        if marker.stat().st_mtime > idle_before:
            return False
        marker.unlink()
    except FileNotFoundError:
        return False
    aside = directory.with_name(f".{directory.name}.{uuid.uuid4().hex}.evicted")
    try:
        directory.rename(aside)
    except FileNotFoundError:
        return False
    shutil.rmtree(aside, ignore_errors=True)
    return True


KEPT_ANSWER_SECONDS = 2.0
_kept_until: dict[str, float] = {}  # remote keys seen holding files, until when that answer stands
_kept_lock = threading.Lock()


def is_kept(location: Path | str) -> bool:
    """Whether a location still holds files (a released sampler's no longer does). Every sample
    request asks, so with a remote store a "yes" is reused for a moment instead of listing the
    store each time; a removal in this process forgets it at once."""
    if not object_store.is_remote():
        return Path(location).is_dir()
    key = key_of(location)
    if _kept_until.get(key, 0.0) > time.monotonic():
        return True
    kept = bool(object_store.files(key))
    if kept:
        with _kept_lock:
            if len(_kept_until) > 10_000:
                _kept_until.clear()
            _kept_until[key] = time.monotonic() + KEPT_ANSWER_SECONDS
    return kept


def _forget_kept(key: str) -> None:
    with _kept_lock:
        for known in [k for k in _kept_until if k == key or k.startswith(key + "/")]:
            del _kept_until[known]


def subdirectories(location: Path | str) -> list[str]:
    """The locations of the directories directly under `location`."""
    if not object_store.is_remote():
        root = Path(location)
        return [str(d) for d in root.iterdir() if d.is_dir()] if root.is_dir() else []
    key = key_of(location)
    return [f"{key}/{name}" for name in object_store.folders(key)]


def remove_tree(location: Path | str) -> None:
    """A directory's files, from the store and from this process's cache."""
    directory = local_directory(location)
    if object_store.is_remote():
        _forget_kept(key_of(location))
        object_store.delete_tree(key_of(location))
        _cached_marker(directory).unlink(missing_ok=True)
    shutil.rmtree(directory, ignore_errors=True)


def drop_replaced(old: Path | str, new: Path | str) -> None:
    """After a checkpoint's row moved from version `old` to `new`: the old version's files and
    archive go (a checkpoint saved before versions existed is overwritten in place: only its
    stale archive goes)."""
    if str(old) == str(new) or not is_version(old):
        if not is_version(new):
            discard_archive(new)
        return
    remove_tree(old)
    discard_archive(old)


def remove_checkpoint_files(location: Path | str) -> None:
    """A deleted checkpoint's files: every version of its name (also one a killed save left
    behind) with their archives; for a checkpoint saved before versions existed, its directory and
    archive."""
    if is_version(location):
        remove_tree(str(PurePosixPath(str(location)).parent))
    else:
        remove_tree(location)
        discard_archive(location)


TOKENIZER_FILE_PREFIXES = ("tokenizer", "special_tokens", "chat_template", "vocab", "merges")


def tokenizer_files(model_dir: Path) -> list[Path]:
    """The files of a local model directory a client needs to load its tokenizer."""
    return [f for f in sorted(model_dir.iterdir()) if f.name.startswith(TOKENIZER_FILE_PREFIXES)]


def sign_file(path: Path, seconds: int | None = None, name: str | None = None) -> tuple[str, datetime]:
    """A token for `path` (under a `servable_roots` directory) valid for `seconds`, downloaded as
    `name` (default the file's own name); returns (token, expiry)."""
    seconds = seconds or settings.LORASMITH.signed_url_seconds
    expires = int(time.time()) + seconds
    claim: dict[str, object] = {"p": str(Path(path).resolve()), "e": expires}
    if name and name != Path(path).name:
        claim["n"] = name
    token = signing.dumps(claim, salt=SALT, compress=True)
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


def signed_url(request, path: Path, seconds: int | None = None, name: str | None = None) -> tuple[str, datetime]:
    token, expires = sign_file(path, seconds, name)
    return request.build_absolute_uri(f"/files/{token}/{name or Path(path).name}"), expires


def open_signed(token: str) -> tuple[Path, str] | None:
    """The file a token grants and the name it downloads as, or None when the token is tampered
    with, expired or its file gone."""
    try:
        claim = signing.loads(token, salt=SALT)
    except signing.BadSignature:
        return None
    if claim.get("e", 0) < time.time():
        return None
    path = Path(claim["p"]).resolve()
    if not path.is_file() or not any(root in path.parents for root in servable_roots()):
        return None
    return path, claim.get("n") or path.name


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


def archive_path(directory: Path | str) -> Path:
    """Where the `.tar` of a checkpoint directory lives: for a version, `<name>/v-<id>.archive/<name>.tar`
    (downloaded as `<name>.tar`, inside the checkpoint's own folder); for a directory from before
    versions, next to it."""
    directory = Path(directory)
    if is_version(directory):
        return directory.with_name(directory.name + ARCHIVE_SUFFIX) / f"{directory.parent.name}.tar"
    return directory.with_name(directory.name + ".tar")


def archive_of(location: Path | str) -> Path | str:
    """The location of a checkpoint's `.tar`. Local: built once on first download (again after the
    checkpoint is overwritten, see `discard_archive`). Remote: uploaded at save time (`publish`), or
    built from a fetched copy and uploaded if missing."""
    if not object_store.is_remote():
        return _build_archive(Path(location))
    key = key_of(archive_path(key_of(location)))
    if not object_store.exists(key):
        _upload_archive(fetch(location))
    return key


def _build_archive(directory: Path) -> Path:
    """Concurrent builders each write their own part file; the tar is written to disk, file by file."""
    target = archive_path(directory)
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.{uuid.uuid4().hex}.part")
        with tarfile.open(partial, "w") as tar:
            for file in sorted(directory.iterdir()):
                tar.add(file, arcname=file.name)
        partial.replace(target)
    return target


def _upload_archive(directory: Path) -> None:
    target = _build_archive(directory)
    try:
        object_store.upload(target, key_of(target))
    finally:
        _discard_local_archive(directory)


def discard_archive(location: Path | str) -> None:
    if object_store.is_remote():
        object_store.delete(key_of(archive_path(key_of(location))))
    _discard_local_archive(local_directory(location))


def _discard_local_archive(directory: Path) -> None:
    archive = archive_path(directory)
    if is_version(directory):
        shutil.rmtree(archive.parent, ignore_errors=True)
    else:
        archive.unlink(missing_ok=True)


def checkpoint_files(location: Path | str) -> list[Path | str]:
    """The locations of a checkpoint's files, by name."""
    if not object_store.is_remote():
        return sorted(Path(location).iterdir())
    key = key_of(location)
    return [f"{key}/{name}" for name in object_store.files(key)]


def download_url(
    request, location: Path | str, seconds: int | None = None, filename: str | None = None
) -> tuple[str, datetime]:
    """A link that downloads a checkpoint file or archive without an API key, and its expiry: a
    `/files/` URL signed here for local files, a URL of the store presigned for its public endpoint
    otherwise (the bytes then never pass through the web process; the store names the download
    `filename`, default the file's own name)."""
    if not object_store.is_remote():
        return signed_url(request, Path(location), seconds, name=filename)
    seconds = seconds or settings.LORASMITH.signed_url_seconds
    expires = int(time.time()) + seconds
    key = key_of(location)
    url = object_store.presigned_url(key, filename or PurePosixPath(key).name, seconds)
    return url, datetime.fromtimestamp(expires, tz=UTC)
