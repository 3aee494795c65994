"""RestClient: runs and checkpoints (list, delete, publish, TTL, download)."""

from __future__ import annotations

import hashlib
import tarfile
from pathlib import Path
from typing import Any

from ._internal import background
from ._internal.config import make_transport
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
    """Runs, checkpoints, sessions and samplers of your account: list, inspect, delete, publish,
    set TTLs, download. Every call returns an APIFuture at once.

    Args:
        base_url: The server; defaults to `LORASMITH_BASE_URL`, then `TINKER_BASE_URL`.
        api_key: A `tml-` key; defaults to `LORASMITH_API_KEY`, then `TINKER_API_KEY`.
        transport: An existing transport to share (what `ServiceClient.create_rest_client` passes);
            `base_url` and `api_key` are then not used.

    Raises:
        LorasmithError: No transport is given and no server or valid API key is configured.

    Example:
        rest = lorasmith.RestClient("http://127.0.0.1:8000", "tml-...")
        print(rest.list_training_runs().result()["training_runs"])
    """

    def __init__(self, base_url: str | None = None, api_key: str | None = None, *, transport: Transport | None = None):
        self.transport = transport if transport is not None else make_transport(base_url, api_key, use_websocket=False)

    def _call(self, method: str, path: str, body: dict | None = None, params: dict | None = None) -> APIFuture:
        return APIFuture(background.submit(self.transport.request(method, path, body, params)))

    def _checkpoint(self, tinker_path: str) -> str:
        run_id, checkpoint_id = split_tinker_path(tinker_path)
        return f"training_runs/{run_id}/checkpoints/{checkpoint_id}"

    def list_training_runs(self, limit: int = 20, offset: int = 0) -> APIFuture[dict]:
        """One page of your training runs, newest first.

        Args:
            limit: Runs per page (1-1000).
            offset: Runs to skip.

        Returns:
            A future of `{"training_runs": [...], "cursor": {"offset", "limit", "total_count"}}`.

        Example:
            page = rest.list_training_runs(limit=50).result()
        """
        return self._call("GET", "training_runs", params={"limit": limit, "offset": offset})

    def get_training_run(self, run_id: str) -> APIFuture[dict]:
        """One training run.

        Args:
            run_id: The run's id (a TrainingClient's `model_id`).

        Returns:
            A future of the run (base_model, lora_rank, step, last checkpoints, ...).

        Example:
            run = rest.get_training_run(training.model_id).result()
        """
        return self._call("GET", f"training_runs/{run_id}")

    def list_checkpoints(self, run_id: str) -> APIFuture[dict]:
        """The unexpired checkpoints of one run, newest first.

        Args:
            run_id: The run's id.

        Returns:
            A future of `{"checkpoints": [...]}`.

        Example:
            paths = [c["tinker_path"] for c in rest.list_checkpoints(run_id).result()["checkpoints"]]
        """
        return self._call("GET", f"training_runs/{run_id}/checkpoints")

    def list_user_checkpoints(self, limit: int = 100, offset: int = 0) -> APIFuture[dict]:
        """One page of the unexpired checkpoints of all your runs, newest first.

        Args:
            limit: Checkpoints per page (1-1000).
            offset: Checkpoints to skip.

        Returns:
            A future of `{"checkpoints": [...], "cursor": {"offset", "limit", "total_count"}}`.

        Example:
            page = rest.list_user_checkpoints().result()
        """
        return self._call("GET", "checkpoints", params={"limit": limit, "offset": offset})

    def get_training_run_by_tinker_path(self, tinker_path: str) -> APIFuture[dict]:
        """The training run a checkpoint belongs to.

        Args:
            tinker_path: A checkpoint, `tinker://<run>/<segment>/<name>`.

        Returns:
            A future of the run, as `get_training_run` gives it.

        Example:
            run = rest.get_training_run_by_tinker_path(saved.path).result()
        """
        return self.get_training_run(split_tinker_path(tinker_path)[0])

    def delete_checkpoint(self, tinker_path_or_run_id: str, checkpoint_id: str | None = None) -> APIFuture[Any]:
        """Delete one of your checkpoints.

        Args:
            tinker_path_or_run_id: The checkpoint's `tinker://` path, or (Tinker's form) its run id.
            checkpoint_id: With a run id, the checkpoint's id, e.g. `"sampler_weights/final"`.

        Returns:
            A future of None once deleted.

        Example:
            rest.delete_checkpoint("tinker://run/sampler_weights/final").result()
        """
        if checkpoint_id is not None:
            return self._call("DELETE", f"training_runs/{tinker_path_or_run_id}/checkpoints/{checkpoint_id}")
        return self._call("DELETE", self._checkpoint(tinker_path_or_run_id))

    def publish_checkpoint(self, tinker_path: str) -> APIFuture[dict]:
        """Make one of your checkpoints readable by every user of the server.

        Args:
            tinker_path: The checkpoint's `tinker://` path.

        Returns:
            A future of the checkpoint, now public.

        Example:
            rest.publish_checkpoint(saved.path).result()
        """
        return self._call("POST", f"{self._checkpoint(tinker_path)}/publish")

    def unpublish_checkpoint(self, tinker_path: str) -> APIFuture[dict]:
        """Make a published checkpoint private again.

        Args:
            tinker_path: The checkpoint's `tinker://` path.

        Returns:
            A future of the checkpoint, now private.

        Example:
            rest.unpublish_checkpoint(saved.path).result()
        """
        return self._call("DELETE", f"{self._checkpoint(tinker_path)}/publish")

    def set_checkpoint_ttl(self, tinker_path: str, ttl_seconds: int | None) -> APIFuture[dict]:
        """Set how long a checkpoint is kept.

        Args:
            tinker_path: The checkpoint's `tinker://` path.
            ttl_seconds: Seconds from now until it expires (3600 to 10 years); None keeps it until deleted.

        Returns:
            A future of the checkpoint with its new expiry.

        Example:
            rest.set_checkpoint_ttl(saved.path, 7 * 24 * 3600).result()
        """
        return self._call("PUT", f"{self._checkpoint(tinker_path)}/ttl", {"ttl_seconds": ttl_seconds})

    def get_checkpoint_archive_url(self, tinker_path: str) -> APIFuture[dict]:
        """A signed URL of a sampler/external checkpoint as one tar archive.

        Args:
            tinker_path: The checkpoint's `tinker://` path.

        Returns:
            A future of `{"url", "expires"}`.

        Example:
            url = rest.get_checkpoint_archive_url(saved.path).result()["url"]
        """
        return self._call("GET", f"{self._checkpoint(tinker_path)}/archive")

    def get_external_weights_urls(self, tinker_path: str) -> APIFuture[dict]:
        """Signed URLs of a sampler/external checkpoint's files, one per file.

        Args:
            tinker_path: The checkpoint's `tinker://` path.

        Returns:
            A future of `{"urls": {relative path: url}, "expires"}`.

        Example:
            urls = rest.get_external_weights_urls(saved.path).result()["urls"]
        """
        return self._call("GET", f"{self._checkpoint(tinker_path)}/external_weights_urls")

    def get_weights_info(self, tinker_path: str) -> APIFuture[dict]:
        """What a checkpoint's weights are: base model, LoRA rank, trained layers.

        Args:
            tinker_path: A checkpoint you may read (yours or published).

        Returns:
            A future of `{"base_model", "is_lora", "lora_rank", "train_unembed", "train_mlp", "train_attn", ...}`.

        Example:
            base_model = rest.get_weights_info(saved.path).result()["base_model"]
        """
        return self._call("POST", "weights_info", {"tinker_path": tinker_path})

    def list_sessions(self, limit: int = 20, offset: int = 0) -> APIFuture[dict]:
        """One page of your session ids, newest first.

        Args:
            limit: Sessions per page (1-1000).
            offset: Sessions to skip.

        Returns:
            A future of `{"sessions": [session id, ...]}`.

        Example:
            session_ids = rest.list_sessions().result()["sessions"]
        """
        return self._call("GET", "sessions", params={"limit": limit, "offset": offset})

    def get_session(self, session_id: str) -> APIFuture[dict]:
        """One session: its training runs, samplers, metadata and how it finished.

        Args:
            session_id: The session's id (`ServiceClient.session_id`).

        Returns:
            A future of `{"session_id", "training_run_ids", "sampler_ids", "user_metadata", ...}`.

        Example:
            runs = rest.get_session(service.session_id).result()["training_run_ids"]
        """
        return self._call("GET", f"sessions/{session_id}")

    def get_sampler(self, sampler_id: str) -> APIFuture[dict]:
        """One sampler (sampling session).

        Args:
            sampler_id: A SamplingClient's `sampling_session_id`.

        Returns:
            A future of `{"sampler_id", "base_model", "model_path"}`.

        Example:
            base_model = rest.get_sampler(sampler.sampling_session_id).result()["base_model"]
        """
        return self._call("GET", f"samplers/{sampler_id}")

    def get_server_capabilities(self) -> APIFuture[dict]:
        """What the server offers, e.g. its base models.

        Returns:
            A future of the server's `get_server_capabilities` answer.

        Example:
            models = rest.get_server_capabilities().result()["supported_models"]
        """
        return self._call("GET", "get_server_capabilities")

    # Tinker's names for the same calls, so ported code runs unchanged
    delete_checkpoint_from_tinker_path = delete_checkpoint
    publish_checkpoint_from_tinker_path = publish_checkpoint
    unpublish_checkpoint_from_tinker_path = unpublish_checkpoint
    set_checkpoint_ttl_from_tinker_path = set_checkpoint_ttl
    get_checkpoint_archive_url_from_tinker_path = get_checkpoint_archive_url
    get_weights_info_by_tinker_path = get_weights_info

    def download_checkpoint(self, tinker_path: str, dest_dir: str | Path, progress: bool = True) -> Path:
        """Download a sampler/external checkpoint as a PEFT directory (adapter_config.json +
        adapter_model.safetensors).

        Checksum-verified; an interrupted download resumes when called again with the same
        `dest_dir`. A server without archives is read file by file.

        Args:
            tinker_path: The checkpoint's `tinker://` path.
            dest_dir: The directory to fill (created if missing).
            progress: Show a tqdm bar per download.

        Returns:
            `dest_dir` as a Path.

        Example:
            adapter_dir = rest.download_checkpoint(saved.path, "adapter/")
        """
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
