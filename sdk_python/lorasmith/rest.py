"""RestClient: runs and checkpoints (list, delete, publish, TTL, download)."""

from __future__ import annotations

import hashlib
import tarfile
from pathlib import Path
from typing import Any

from ._internal import background
from ._internal.download import download
from ._internal.transport import Transport
from .errors import LorasmithError, NotFoundError
from .futures import APIFuture


def split_tinker_path(path: str) -> tuple[str, str]:
    """`tinker://run/segment/name` -> (run id, checkpoint id `segment/name`)."""
    if not path.startswith("tinker://") or path.count("/") != 4:
        raise LorasmithError(f"not a checkpoint path: {path!r} (expected tinker://<run>/<segment>/<name>)")
    run_id, segment, name = path.removeprefix("tinker://").split("/")
    return run_id, f"{segment}/{name}"


class RestClient:
    def __init__(self, base_url: str | None = None, api_key: str | None = None, *, transport: Transport | None = None):
        if transport is None:
            from .service import ServiceClient

            transport = ServiceClient(base_url, api_key, use_websocket=False).transport
        self.transport = transport

    def _call(self, method: str, path: str, body: dict | None = None, params: dict | None = None) -> APIFuture:
        return APIFuture(background.submit(self.transport.request(method, path, body, params)))

    def _checkpoint(self, tinker_path: str) -> str:
        run_id, checkpoint_id = split_tinker_path(tinker_path)
        return f"training_runs/{run_id}/checkpoints/{checkpoint_id}"

    def list_training_runs(self, limit: int = 20, offset: int = 0) -> APIFuture[dict]:
        return self._call("GET", "training_runs", params={"limit": limit, "offset": offset})

    def get_training_run(self, run_id: str) -> APIFuture[dict]:
        return self._call("GET", f"training_runs/{run_id}")

    def list_checkpoints(self, run_id: str) -> APIFuture[dict]:
        return self._call("GET", f"training_runs/{run_id}/checkpoints")

    def list_user_checkpoints(self, limit: int = 100, offset: int = 0) -> APIFuture[dict]:
        return self._call("GET", "checkpoints", params={"limit": limit, "offset": offset})

    def get_training_run_by_tinker_path(self, tinker_path: str) -> APIFuture[dict]:
        return self.get_training_run(split_tinker_path(tinker_path)[0])

    def delete_checkpoint(self, tinker_path_or_run_id: str, checkpoint_id: str | None = None) -> APIFuture[Any]:
        """`delete_checkpoint("tinker://run/sampler_weights/x")`, or Tinker's `(run_id, checkpoint_id)`."""
        if checkpoint_id is not None:
            return self._call("DELETE", f"training_runs/{tinker_path_or_run_id}/checkpoints/{checkpoint_id}")
        return self._call("DELETE", self._checkpoint(tinker_path_or_run_id))

    def publish_checkpoint(self, tinker_path: str) -> APIFuture[dict]:
        return self._call("POST", f"{self._checkpoint(tinker_path)}/publish")

    def unpublish_checkpoint(self, tinker_path: str) -> APIFuture[dict]:
        return self._call("DELETE", f"{self._checkpoint(tinker_path)}/publish")

    def set_checkpoint_ttl(self, tinker_path: str, ttl_seconds: int | None) -> APIFuture[dict]:
        return self._call("PUT", f"{self._checkpoint(tinker_path)}/ttl", {"ttl_seconds": ttl_seconds})

    def get_checkpoint_archive_url(self, tinker_path: str) -> APIFuture[dict]:
        return self._call("GET", f"{self._checkpoint(tinker_path)}/archive")

    def get_external_weights_urls(self, tinker_path: str) -> APIFuture[dict]:
        return self._call("GET", f"{self._checkpoint(tinker_path)}/external_weights_urls")

    def get_weights_info(self, tinker_path: str) -> APIFuture[dict]:
        return self._call("POST", "weights_info", {"tinker_path": tinker_path})

    def list_sessions(self, limit: int = 20, offset: int = 0) -> APIFuture[dict]:
        return self._call("GET", "sessions", params={"limit": limit, "offset": offset})

    def get_session(self, session_id: str) -> APIFuture[dict]:
        return self._call("GET", f"sessions/{session_id}")

    def get_sampler(self, sampler_id: str) -> APIFuture[dict]:
        return self._call("GET", f"samplers/{sampler_id}")

    def get_server_capabilities(self) -> APIFuture[dict]:
        return self._call("GET", "get_server_capabilities")

    # Tinker's names for the same calls, so ported code runs unchanged
    delete_checkpoint_from_tinker_path = delete_checkpoint
    publish_checkpoint_from_tinker_path = publish_checkpoint
    unpublish_checkpoint_from_tinker_path = unpublish_checkpoint
    set_checkpoint_ttl_from_tinker_path = set_checkpoint_ttl
    get_checkpoint_archive_url_from_tinker_path = get_checkpoint_archive_url
    get_weights_info_by_tinker_path = get_weights_info

    def download_checkpoint(self, tinker_path: str, dest_dir: str | Path, progress: bool = True) -> Path:
        """A sampler/external checkpoint as a PEFT directory (adapter_config.json +
        adapter_model.safetensors) in `dest_dir`. Checksum-verified; an interrupted download resumes
        when called again with the same `dest_dir`. Servers without archives get the per-file URLs."""
        dest = Path(dest_dir)
        dest.mkdir(parents=True, exist_ok=True)
        try:
            url = self.get_checkpoint_archive_url(tinker_path).result()["url"]
        except NotFoundError:
            for relpath, file_url in self.get_external_weights_urls(tinker_path).result()["urls"].items():
                download(file_url, dest / relpath, progress=progress)
            return dest
        key = hashlib.sha256(tinker_path.encode()).hexdigest()[:16]
        archive = download(url, dest / f".lorasmith-{key}.tar", progress=progress)
        with tarfile.open(archive) as tar:
            tar.extractall(dest, filter="data")
        archive.unlink()
        return dest
