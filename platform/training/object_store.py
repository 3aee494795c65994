"""The store that keeps checkpoints and snapshots, through Django's storage API
(`STORAGES["checkpoints"]`): files under the data dir by default, any S3-compatible store
(django-storages' S3Storage) when LORASMITH_S3_BUCKET and LORASMITH_S3_ENDPOINT_URL are set.

Only a remote store needs these calls: locally a file's key is its path under the data dir, where
the engine already wrote it. Transfers stream file by file (boto3's managed transfers, in parts),
so no checkpoint is ever held in memory whole.
"""

from __future__ import annotations

import base64
import json
import shutil
import zlib
from pathlib import Path
from typing import Any
from urllib.parse import quote

from django.conf import settings
from django.core.files import File
from django.core.files.storage import FileSystemStorage, Storage, storages

ALIAS = "checkpoints"
CHUNK = 1 << 20


def store() -> Storage:
    return storages[ALIAS]


def is_remote() -> bool:
    """Whether checkpoint files live in an object store rather than under the data dir."""
    return not isinstance(store(), FileSystemStorage)


def upload(local: Path, key: str) -> None:
    with open(local, "rb") as handle:
        saved = store().save(key, File(handle, name=local.name))
    if saved != key:  # a store that renames instead of overwriting would lose the version's layout
        raise RuntimeError(f"the store kept {key!r} as {saved!r}")


def download(key: str, local: Path) -> None:
    backend = store()
    bucket = getattr(backend, "bucket", None)
    if bucket is not None:  # S3: boto3 streams it to disk in parts
        bucket.download_file(key, str(local))
        _verify(bucket, key, local)
        return
    with backend.open(key, "rb") as source, open(local, "wb") as target:
        shutil.copyfileobj(source, target, CHUNK)


def _verify(bucket: Any, key: str, local: Path) -> None:
    """A downloaded file against the CRC32 the store keeps of the whole object (boto3 sends one with
    every upload): boto3 itself checks a whole-object GET but not a download in ranged parts, which
    is how every file over 8 MiB (any real adapter's weights) arrives. Only a whole-object checksum
    can be compared: one the store reports as FULL_OBJECT, or that of an object uploaded in one
    part; a checksum of the parts (COMPOSITE), or none, is not checked."""
    head = bucket.meta.client.head_object(Bucket=bucket.name, Key=key, ChecksumMode="ENABLED")
    expected = head.get("ChecksumCRC32")
    whole = head.get("ChecksumType") == "FULL_OBJECT" or (
        "ChecksumType" not in head and "-" not in head.get("ETag", "-")
    )
    if not expected or not whole:
        return
    crc = 0
    with open(local, "rb") as handle:
        while chunk := handle.read(CHUNK):
            crc = zlib.crc32(chunk, crc)
    got = base64.b64encode(crc.to_bytes(4, "big")).decode()
    if got != expected:
        local.unlink(missing_ok=True)
        raise OSError(f"{key} arrived damaged: its CRC32 is {got}, the store's {expected}")


def files(prefix: str) -> list[str]:
    """The names of the files directly under `prefix` (a "directory" of keys)."""
    return sorted(store().listdir(prefix)[1])


def folders(prefix: str) -> list[str]:
    return sorted(d.rstrip("/") for d in store().listdir(prefix)[0])


def exists(key: str) -> bool:
    return store().exists(key)


def delete(key: str) -> None:
    store().delete(key)


def delete_tree(prefix: str) -> None:
    """Every object under `prefix`, at any depth."""
    directories, names = store().listdir(prefix)
    for name in names:
        store().delete(f"{prefix}/{name}")
    for directory in directories:
        delete_tree(f"{prefix}/{directory.rstrip('/')}")


_public: dict[str, Storage] = {}


def public_store() -> Storage:
    """The store as browsers reach it: the same bucket and credentials, signed for
    LORASMITH_S3_PUBLIC_URL when that differs from the endpoint the service uses."""
    public_url = getattr(settings, "LORASMITH_S3_PUBLIC_URL", "")
    if not public_url:
        return store()
    config = settings.STORAGES[ALIAS]
    options = {**config.get("OPTIONS", {}), "endpoint_url": public_url}
    cache_key = json.dumps([config["BACKEND"], options], sort_keys=True, default=str)
    if cache_key not in _public:
        from django.utils.module_loading import import_string

        _public[cache_key] = import_string(config["BACKEND"])(**options)
    return _public[cache_key]


def presigned_url(key: str, filename: str, seconds: int) -> str:
    """A GET URL of the store for `key`, valid `seconds`, that downloads as `filename`."""
    plain = filename.encode("ascii", "replace").decode().replace('"', "_").replace("\\", "_")
    disposition = f"attachment; filename=\"{plain}\"; filename*=UTF-8''{quote(filename)}"
    backend: Any = public_store()  # S3Storage.url takes the query parameters and the expiry
    return backend.url(key, parameters={"ResponseContentDisposition": disposition}, expire=seconds)
