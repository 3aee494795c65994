"""Checkpoints through Django's storage API, the same suite on both backends: local files (the
default) and an S3-compatible store (moto's standalone server on loopback, a real HTTP server, no
mock object). Save, load, list, download (fetched with a plain HTTP client and compared with the
stored bytes), presigned expiry and host, TTL expiry and delete; then, with the store, a load
after the runner's local cache is wiped, and snapshots written to the store.

What the store holds is read independently of the service: its files on disk, or the bucket
through a boto3 client of the test's own.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tarfile
import time
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from ..conftest import ROOT, LiveServer, embedded_server, free_port, postgres_database, redis_env
from .flow import LR as FLOW_LR
from .flow import SEQUENCE as FLOW_SEQUENCE
from .test_scale_runners import reference_losses
from .wire import Wire, datum_json

SEQUENCE = [3, 320, 265, 203, 44, 538, 83, 685, 4, 203, 3]
BUCKET = "lorasmith-test"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
SIGNED_SECONDS = 900
LIVE = pytest.mark.slow  # a live server per backend: a minute or two each to start on a loaded box


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory):
    """moto's standalone S3 server on a loopback port, with an empty bucket."""
    port = free_port()
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "w")  # noqa: SIM115 - the child writes it
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, **CREDENTIALS},
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, "moto server exited"
            try:
                httpx.get(endpoint, timeout=2)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "moto server did not start"
                time.sleep(0.2)
        _bucket_client(endpoint).create_bucket(Bucket=BUCKET)
        yield endpoint
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def _bucket_client(endpoint: str):
    import boto3

    keys = {k.lower(): v for k, v in CREDENTIALS.items() if "KEY" in k}
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **keys)


class Backend:
    """A live embedded server on one backend, and the bytes its store holds."""

    def __init__(self, name: str, server, endpoint: str | None):
        self.name, self.server, self.endpoint = name, server, endpoint
        self.wire = Wire(server.client())

    def stored(self, fragment: str) -> dict[str, bytes]:
        """Every stored file whose key (path under the data dir) contains `fragment`."""
        if self.endpoint is None:
            root = self.server.data_dir
            return {
                p.relative_to(root).as_posix(): p.read_bytes()
                for p in root.rglob("*")
                if p.is_file() and fragment in p.relative_to(root).as_posix()
            }
        client = _bucket_client(self.endpoint)
        keys = [
            o["Key"]
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
            for o in page.get("Contents", [])
        ]
        return {k: client.get_object(Bucket=BUCKET, Key=k)["Body"].read() for k in keys if fragment in k}


@pytest.fixture(scope="module", params=["local", "s3"])
def backend(request, tmp_path_factory):
    env = {
        "LORASMITH_SIGNED_URL_SECONDS": str(SIGNED_SECONDS),
        "LORASMITH_SNAPSHOT_EVERY_STEPS": "2",
        "LORASMITH_EPHEMERAL_SAMPLERS_KEPT": "1",
    }
    endpoint = None
    if request.param == "s3":
        endpoint = request.getfixturevalue("s3_endpoint")
        public = endpoint.replace("127.0.0.1", "localhost")  # the address browsers use, signed for
        env |= {
            "LORASMITH_S3_BUCKET": BUCKET,
            "LORASMITH_S3_ENDPOINT_URL": endpoint,
            "LORASMITH_S3_PUBLIC_URL": public,
            **CREDENTIALS,
        }
    with embedded_server(tmp_path_factory.mktemp(f"storage-{request.param}"), extra_env=env) as server:
        yield Backend(request.param, server, endpoint)


@pytest.fixture(scope="module")
def trained(backend):
    """A run trained 2 steps, saved as training state `step2` (adapter + optimizer), trained on."""
    wire = backend.wire
    session = wire.session()
    model_id = wire.model(session, seed=21)
    _, seq = wire.train(model_id, 1, 2, SEQUENCE)
    saved = wire.result(wire.post("save_weights", {"model_id": model_id, "seq_id": seq, "path": "step2"}))
    continued, seq = wire.train(model_id, seq + 1, 2, SEQUENCE)
    return {"session": session, "model_id": model_id, "path": saved["path"], "continued": continued, "seq": seq}


def _resume(wire: Wire, trained: dict, model_seq_id: int) -> list[float]:
    handle = wire.post(
        "load_weights",
        {"session_id": trained["session"], "model_seq_id": model_seq_id, "path": trained["path"], "optimizer": True},
    )
    wire.result(handle)
    return wire.train(handle["model_id"], 1, 2, SEQUENCE)[0]


@LIVE
def test_save_list_and_load_resume_exactly(backend, trained):
    wire = backend.wire
    listed = wire.get(f"training_runs/{trained['model_id']}/checkpoints")["checkpoints"]
    assert [(c["checkpoint_id"], c["checkpoint_type"]) for c in listed] == [("weights/step2", "training")]
    stored = backend.stored("/weights/step2/")
    assert stored and listed[0]["size_bytes"] == sum(len(b) for b in stored.values())
    assert _resume(wire, trained, 11) == trained["continued"]  # bit for bit, on CPU


def _query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def _check_link(backend: Backend, url: str, expires: str) -> None:
    """Where a download link points and how long it lives, read off the link itself (moto does not
    enforce a presigned URL's expiry, so the test checks what the link says)."""
    left = datetime.fromisoformat(expires) - datetime.now(UTC)
    assert SIGNED_SECONDS - 60 < left.total_seconds() <= SIGNED_SECONDS
    parts = urlsplit(url)
    if backend.endpoint is None:  # signed by the web process, served at /files/
        assert parts.netloc == f"127.0.0.1:{backend.server.port}" and parts.path.startswith("/files/")
        return
    query = _query(url)
    assert parts.netloc == urlsplit(backend.endpoint).netloc.replace("127.0.0.1", "localhost")  # the public endpoint
    assert parts.path.startswith(f"/{BUCKET}/checkpoints/")
    assert query["X-Amz-Expires"] == str(SIGNED_SECONDS) and query["X-Amz-Algorithm"] == "AWS4-HMAC-SHA256"
    signed_at = datetime.strptime(query["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    assert abs((signed_at - datetime.now(UTC)).total_seconds()) < 120


@LIVE
def test_download_archive_and_files_via_links(backend, trained):
    wire = backend.wire
    model_id = trained["model_id"]
    wire.result(wire.post("save_weights_external", {"model_id": model_id, "seq_id": trained["seq"], "path": "ext"}))
    checkpoint = f"training_runs/{model_id}/checkpoints/external_weights/ext"
    stored = {Path(k).name: v for k, v in backend.stored("/external_weights/ext/").items()}
    files = {n: stored[n] for n in ("adapter_config.json", "adapter_model.safetensors")}
    if backend.endpoint is not None:  # built by the runner at save time, stored as an object of its own
        assert "ext.tar" in stored

    archive = wire.get(f"{checkpoint}/archive")
    _check_link(backend, archive["url"], archive["expires"])
    fetched = httpx.get(archive["url"])  # a plain HTTP client: no API key, no SDK
    short_run = model_id.partition(":train:")[0].replace("-", "")[:8]  # named after its run, as the dashboard's
    assert (
        fetched.status_code == 200 and f'filename="{short_run}-ext-peft.tar"' in fetched.headers["content-disposition"]
    )
    with tarfile.open(fileobj=io.BytesIO(fetched.content)) as tar:
        assert {m.name: tar.extractfile(m).read() for m in tar.getmembers()} == files
    stored_tars = [v for k, v in backend.stored("/external_weights/ext/").items() if k.endswith("/ext.tar")]
    assert stored_tars == [fetched.content]  # the link served the stored archive, byte for byte


@LIVE
def test_external_weights_urls_give_each_file(backend, trained):
    wire = backend.wire
    model_id = trained["model_id"]
    wire.result(
        wire.post("save_weights_external", {"model_id": model_id, "seq_id": trained["seq"] + 1, "path": "each"})
    )
    stored = {Path(k).name: v for k, v in backend.stored("/external_weights/each/").items() if not k.endswith(".tar")}
    answer = wire.get(f"training_runs/{model_id}/checkpoints/external_weights/each/external_weights_urls")
    assert sorted(answer["urls"]) == sorted(stored) == ["adapter_config.json", "adapter_model.safetensors"]
    for name, url in answer["urls"].items():
        _check_link(backend, url, answer["expires"])
        body = httpx.get(url).content
        assert hashlib.sha256(body).digest() == hashlib.sha256(stored[name]).digest()


@LIVE
def test_ttl_expiry_and_delete_free_the_store(backend, trained):
    wire = backend.wire
    model_id = wire.model(trained["session"], 30, seed=22)
    for name in ("brief", "doomed"):
        wire.result(
            wire.post(
                "save_weights_for_sampler",
                {"model_id": model_id, "seq_id": 1 + (name == "doomed"), "path": name, "ttl_seconds": 3600},
            )
        )
    base = f"training_runs/{model_id}/checkpoints/sampler_weights"
    assert wire.client.get(f"{base}/brief/archive").status_code == 200
    assert backend.stored("/sampler_weights/brief/") and backend.stored("/sampler_weights/doomed/")

    with sqlite3.connect(backend.server.data_dir / "lorasmith.sqlite3") as db:  # let the hour pass
        db.execute("UPDATE training_checkpoint SET expires_at = '2000-01-01 00:00:00' WHERE name = 'brief'")
    assert wire.client.get(f"{base}/brief/archive").status_code == 404
    backend.server._manage("purge_checkpoints")  # what cron runs
    assert backend.stored("/sampler_weights/brief/") == {}  # files and archive gone from the store

    assert wire.client.delete(f"{base}/doomed").status_code == 204
    assert backend.stored("/sampler_weights/doomed/") == {}
    assert wire.client.get(f"{base}/doomed/archive").status_code == 404


@LIVE
def test_an_overwrite_switches_versions_and_drops_the_old_one(backend, trained):
    """Issue 19's versions on both backends: an overwritten checkpoint's store holds the new
    version and its archive only, and the archive served is the new one."""
    wire = backend.wire
    model_id = wire.model(trained["session"], 50, seed=24)
    archives = []
    for seq in (1, 3):
        wire.result(wire.forward_backward(model_id, seq, [datum_json(SEQUENCE)]))
        wire.result(wire.optim_step(model_id, seq + 1))
        body = {"model_id": model_id, "seq_id": seq + 2, "path": "ow", "overwrite": True}
        wire.result(wire.post("save_weights_for_sampler", body))
        archive = wire.get(f"training_runs/{model_id}/checkpoints/sampler_weights/ow/archive")
        archives.append(httpx.get(archive["url"]).content)
    stored = backend.stored(f"{model_id.replace(':', '_')}/sampler_weights/ow/")
    versions = {k.split("/sampler_weights/ow/")[1].split("/")[0].removesuffix(".archive") for k in stored}
    assert len(versions) == 1  # the old version and its archive are gone
    assert archives[0] != archives[1] and [v for k, v in stored.items() if k.endswith("ow.tar")] == [archives[1]]


@LIVE
def test_ephemeral_samplers_are_stored_sampled_and_released(backend, trained):
    """Unnamed sampler weights (save_weights_and_get_sampling_client) on the store: the runner
    imports them to sample; with LORASMITH_EPHEMERAL_SAMPLERS_KEPT=1 the older one leaves the
    store once a newer one is saved, and sampling it is a clear 410."""
    wire = backend.wire
    model_id = wire.model(trained["session"], 40, seed=23)
    safe_run = model_id.replace(":", "_")
    samplers = []
    for seq in (1, 2):
        body = {"model_id": model_id, "seq_id": seq, "sampling_session_seq_id": 40 + seq}
        samplers.append(wire.result(wire.post("save_weights_for_sampler", body))["sampling_session_id"])
        if seq == 1:
            assert backend.stored(f"{safe_run}/ephemeral/seq-1/")  # stored before anything samples it
            sampled = wire.result(wire.post("asample", Wire.sample_body(samplers[0], 0, SEQUENCE[:4], max_tokens=2)))
            assert len(sampled["sequences"][0]["tokens"]) == 2
    assert backend.stored(f"{safe_run}/ephemeral/seq-1/") == {} and backend.stored(f"{safe_run}/ephemeral/seq-2/")
    refused = wire.send("asample", Wire.sample_body(samplers[0], 1, SEQUENCE[:4]))
    assert refused.status_code == 410 and refused.json()["field"] == "sampling_session_id"
    assert wire.send("asample", Wire.sample_body(samplers[1], 0, SEQUENCE[:4])).status_code == 200


@LIVE
@pytest.mark.parametrize("backend", ["s3"], indirect=True)  # local files are the store itself
def test_a_load_after_the_local_cache_is_wiped_fetches_from_the_store(backend, trained):
    data_dir = backend.server.data_dir
    assert (data_dir / "checkpoints").is_dir()  # the runner's scratch and cache
    shutil.rmtree(data_dir / "checkpoints")
    assert _resume(backend.wire, trained, 12) == trained["continued"]
    assert list((data_dir / "checkpoints").rglob("weights/step2/v-*/optimizer.safetensors"))  # fetched again


@LIVE
def test_snapshots_are_written_to_the_store(backend, trained):
    """Every 2 optimizer steps (LORASMITH_SNAPSHOT_EVERY_STEPS=2) the run's adapter and optimizer
    go to the store (in the background with S3); the run's API says which seq they cover."""
    run = backend.wire.get(f"training_runs/{trained['model_id']}")
    deadline = time.monotonic() + 30
    while run["snapshot_seq_id"] is None and time.monotonic() < deadline:
        time.sleep(0.2)
        run = backend.wire.get(f"training_runs/{trained['model_id']}")
    assert run["snapshot_seq_id"] == 9  # the run's 4th optimizer step (seq 9) and all before it
    safe_run = trained["model_id"].replace(":", "_")
    stored = backend.stored(f"snapshots/{safe_run}/seq-9-")
    assert sorted(Path(k).name for k in stored) == ["adapter.safetensors", "lora_spec.json", "optimizer.safetensors"]


def test_settings_need_both_bucket_and_endpoint():
    done = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=ROOT,
        env={**os.environ, "LORASMITH_S3_BUCKET": BUCKET, "LORASMITH_S3_ENDPOINT_URL": ""},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0 and "LORASMITH_S3_ENDPOINT_URL" in done.stderr


@pytest.fixture
def on_s3(s3_endpoint, settings, tmp_path, monkeypatch):
    """This process's checkpoints in the S3 server (its cache under tmp_path); browsers reach the
    store as store.example:9000."""
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    settings.DATA_DIR = tmp_path
    options = {"bucket_name": BUCKET, "endpoint_url": s3_endpoint, "signature_version": "s3v4"}
    checkpoints = {"BACKEND": "storages.backends.s3.S3Storage", "OPTIONS": options}
    settings.STORAGES = {**settings.STORAGES, "checkpoints": checkpoints}
    settings.LORASMITH_S3_PUBLIC_URL = "http://store.example:9000"
    return tmp_path


def test_publish_fetch_link_and_remove_in_process(s3_endpoint, on_s3):
    """The storage functions themselves against the S3 server (fast tier): a save's files and its
    archive uploaded, fetched back after the local copy is gone, a presigned link of the public
    endpoint, and every object of the name removed."""
    from training import object_store, storage

    tmp_path = on_s3
    directory = storage.checkpoint_directory(7, "s:train:0", "sampler_weights", "inproc")
    directory.mkdir(parents=True)
    files = {"adapter_config.json": b'{"r": 8}', "adapter_model.safetensors": os.urandom(9 * 1024 * 1024)}  # multipart
    for name, body in files.items():
        (directory / name).write_bytes(body)

    location = storage.publish(directory, archive=True)
    assert location == directory.relative_to(tmp_path).as_posix()
    in_bucket = {k: v for k, v in _objects(s3_endpoint, "checkpoints/7/s_train_0/sampler_weights/inproc/").items()}
    assert {k.rsplit("/", 1)[1]: v for k, v in in_bucket.items() if "/v-" in k and ".archive/" not in k} == files
    [tar_bytes] = [v for k, v in in_bucket.items() if k.endswith(".archive/inproc.tar")]
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        assert {m.name: tar.extractfile(m).read() for m in tar.getmembers()} == files

    shutil.rmtree(tmp_path / "checkpoints")  # the runner's cache is gone: a load fetches from the store
    fetched = storage.fetch(location)
    assert fetched == directory and {p.name: p.read_bytes() for p in fetched.iterdir()} == files
    assert storage.is_kept(location) and storage.checkpoint_files(location) == [
        f"{location}/{n}" for n in sorted(files)
    ]

    url, expires = storage.download_url(None, storage.archive_of(location), seconds=120)
    assert urlsplit(url).netloc == "store.example:9000" and _query(url)["X-Amz-Expires"] == "120"
    assert 60 < (expires - datetime.now(UTC)).total_seconds() <= 120

    killed = storage.checkpoint_directory(7, "s:train:0", "sampler_weights", "inproc")  # a save killed mid-upload
    killed.mkdir(parents=True)
    (killed / "adapter_config.json").write_bytes(b"{}")
    object_store.upload(killed / "adapter_config.json", f"{storage.key_of(killed)}/adapter_config.json")
    storage.remove_checkpoint_files(location)  # every version of the name goes, the orphan too
    assert _objects(s3_endpoint, "checkpoints/7/") == {} and not directory.exists()
    assert not storage.is_kept(location)


def test_dashboard_download_redirects_to_the_store(s3_endpoint, on_s3, client, django_user_model):
    """The dashboard's download button in S3 mode: a redirect to the archive's presigned URL on the
    store's public endpoint (the store serves it; the web process sends no bytes)."""
    from tests.front.conftest import make_run
    from training import download_names, storage
    from training.models import Checkpoint

    user = django_user_model.objects.create_user("carol", password="pw-carol-123")
    client.force_login(user)
    run = make_run(user)
    directory = storage.checkpoint_directory(user.id, run.id, "sampler_weights", "final")
    directory.mkdir(parents=True)
    (directory / "adapter_model.safetensors").write_bytes(b"weights")
    location = storage.publish(directory, archive=True)
    Checkpoint.objects.create(training_run=run, owner=user, checkpoint_type="sampler", name="final", directory=location)
    answer = client.get(f"/runs/{run.id}/checkpoints/sampler_weights/final/download/")
    assert answer.status_code == 302
    url = answer["Location"]
    assert urlsplit(url).netloc == "store.example:9000" and _query(url)["X-Amz-Expires"] == "3600"
    # the same URL on the address this test reaches the store by (moto ignores the Host it was signed for)
    served = httpx.get(url.replace("http://store.example:9000", s3_endpoint))
    assert (
        f'filename="{download_names.archive_name(Checkpoint.objects.get())}"' in served.headers["content-disposition"]
    )
    with tarfile.open(fileobj=io.BytesIO(served.content)) as tar:
        assert {m.name: tar.extractfile(m).read() for m in tar.getmembers()} == {
            "adapter_model.safetensors": b"weights"
        }


def _objects(endpoint: str, prefix: str) -> dict[str, bytes]:
    client = _bucket_client(endpoint)
    listed = client.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
    return {o["Key"]: client.get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read() for o in listed}


@LIVE
@pytest.mark.services
def test_runners_with_data_dirs_of_their_own_work_through_the_store(tmp_path, s3_endpoint):
    """Web and two runners, each with a data dir of its own (no shared filesystem), on PostgreSQL,
    Redis and the S3 server. A run trains on runner A (its snapshot after step 2 uploaded) and saves
    a checkpoint; A is SIGKILLed; B takes the run over from the snapshot it fetches from the store
    and trains on with the numbers of a run never interrupted (the bare engine's); the checkpoint
    loads on B, a sampler checkpoint downloads from the store; the web's data dir holds no
    checkpoint or snapshot file."""
    bucket = "lorasmith-no-shared-files"
    _bucket_client(s3_endpoint).create_bucket(Bucket=bucket)
    extra = {
        "LORASMITH_S3_BUCKET": bucket,
        "LORASMITH_S3_ENDPOINT_URL": s3_endpoint,
        **CREDENTIALS,
        "LORASMITH_SNAPSHOT_EVERY_STEPS": "2",
        "LORASMITH_RUNNER_DEAD_AFTER_SECONDS": "6",
        "LORASMITH_LOG_LEVEL": "INFO",
    }
    with postgres_database() as database_url:
        env = {**redis_env(tmp_path / "web", database_url), **extra}
        server = LiveServer(env, tmp_path / "web", with_runner=False)
        try:

            def start_runner(name: str) -> subprocess.Popen:
                log = open(server.logs / f"{name}.log", "w")  # noqa: SIM115 - the child writes it
                process = subprocess.Popen(
                    [sys.executable, "manage.py", "runner"],
                    cwd=ROOT,
                    env={**env, "LORASMITH_DATA_DIR": str(tmp_path / name)},
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
                server.processes.append(process)
                server.wait_for_log(name, "runner ready", timeout=180)
                return process

            runner_a = start_runner("runner-a")
            wire = Wire(server.client())
            session = wire.session()
            model_id = wire.model(session, seed=31)

            def step(seq: int) -> dict:
                fb = wire.forward_backward(model_id, seq, [datum_json(FLOW_SEQUENCE)])
                wire.optim_step(model_id, seq + 1, FLOW_LR)
                return fb

            losses = [wire.result(step(seq))["metrics"]["loss:sum"] for seq in (1, 3, 5)]
            saved = wire.result(wire.post("save_weights", {"model_id": model_id, "seq_id": 7, "path": "ck"}))
            deadline = time.monotonic() + 60  # the snapshot after step 2 is uploaded in the background
            while wire.get(f"training_runs/{model_id}")["snapshot_seq_id"] != 4:
                assert time.monotonic() < deadline, "the snapshot after step 2 was never recorded"
                time.sleep(0.3)

            start_runner("runner-b")
            runner_a.send_signal(signal.SIGKILL)
            runner_a.wait(timeout=30)
            shutil.rmtree(tmp_path / "runner-a")  # its disk is gone with it: only the store remains
            pending = [step(seq) for seq in (8, 10)]
            final = wire.forward_backward(model_id, 12, [datum_json(FLOW_SEQUENCE)], forward_only=True)
            losses += [wire.result(h, timeout=180)["metrics"]["loss:sum"] for h in [*pending, final]]
            assert losses == pytest.approx(reference_losses(31, steps=5), rel=1e-5, abs=1e-6)
            assert re.search(
                rf"restored run {re.escape(model_id)} from its snapshot at seq 4",
                (server.logs / "runner-b.log").read_text(),
            )
            assert list((tmp_path / "runner-b" / "snapshots").rglob("optimizer.safetensors"))  # fetched

            loaded = wire.post(
                "load_weights", {"session_id": session, "model_seq_id": 1, "path": saved["path"], "optimizer": True}
            )
            wire.result(loaded, timeout=180)
            check = wire.forward_backward(loaded["model_id"], 1, [datum_json(FLOW_SEQUENCE)], forward_only=True)
            assert wire.result(check, timeout=180)["metrics"]["loss:sum"] == pytest.approx(
                reference_losses(31, steps=3)[-1], rel=1e-5, abs=1e-6
            )
            assert list((tmp_path / "runner-b" / "checkpoints").rglob("weights/ck/v-*/optimizer.safetensors"))

            wire.result(wire.post("save_weights_for_sampler", {"model_id": model_id, "seq_id": 13, "path": "pub"}))
            archive = wire.get(f"training_runs/{model_id}/checkpoints/sampler_weights/pub/archive")
            assert urlsplit(archive["url"]).netloc == urlsplit(s3_endpoint).netloc
            with tarfile.open(fileobj=io.BytesIO(httpx.get(archive["url"]).content)) as tar:
                assert sorted(tar.getnames()) == ["adapter_config.json", "adapter_model.safetensors"]
            web_dir = tmp_path / "web"
            assert not (web_dir / "checkpoints").exists() and not (web_dir / "snapshots").exists()
        finally:
            server.stop()


def test_local_copies_of_the_store_are_a_bounded_cache(s3_endpoint, on_s3):
    """What a process saved or fetched stays on its disk only as a cache: beyond the limit the least
    recently used idle copies go (a fetch counts as a use), the store keeps every file, and a fetch
    brings an evicted copy back whole."""
    from training import storage

    sizes = {"a": 1000, "b": 2000, "c": 3000}
    bodies, locations, directories = {}, {}, {}
    for name, size in sizes.items():
        directory = storage.checkpoint_directory(8, "s:cache:0", "weights", name)
        directory.mkdir(parents=True)
        bodies[name] = os.urandom(size)
        (directory / "adapter_model.safetensors").write_bytes(bodies[name])
        locations[name], directories[name] = storage.publish(directory), directory
        time.sleep(0.01)
    assert storage.fetch(locations["a"]) == directories["a"]  # used last: now the order is b, c, a

    assert storage.trim_cache(10_000, idle_seconds=0) == 0  # under the limit: nothing goes
    assert storage.trim_cache(3000, idle_seconds=3600) == 0  # over it, but every copy was used this hour
    assert storage.trim_cache(4000, idle_seconds=0) == sizes["b"]  # 6000 held: the least recently used goes
    assert not directories["b"].exists() and directories["a"].exists() and directories["c"].exists()
    assert storage.trim_cache(1000, idle_seconds=0) == sizes["c"]
    assert [n for n in sizes if directories[n].exists()] == ["a"]

    stored = _objects(s3_endpoint, "checkpoints/8/s_cache_0/")
    assert sorted(stored.values()) == sorted(bodies.values())  # the store kept them all
    for name in ("b", "c"):
        fetched = storage.fetch(locations[name])
        assert (fetched / "adapter_model.safetensors").read_bytes() == bodies[name]
    assert not list(on_s3.rglob("*.evicted"))  # nothing left aside


@pytest.mark.django_db
def test_housekeeping_keeps_the_cache_under_its_bound(s3_endpoint, on_s3, settings, monkeypatch):
    """The runner's chores between cycles trim the cache to LORASMITH_CACHE_MAX_BYTES."""
    import dataclasses

    from training import storage
    from training.upkeep import housekeeping

    directory = storage.checkpoint_directory(9, "s:cache:1", "weights", "old")
    directory.mkdir(parents=True)
    (directory / "adapter_model.safetensors").write_bytes(os.urandom(4096))
    location = storage.publish(directory)
    hours_ago = time.time() - 7200
    os.utime(directory.with_name(directory.name + storage.CACHED_SUFFIX), (hours_ago, hours_ago))  # last used 2 h ago
    settings.LORASMITH = dataclasses.replace(settings.LORASMITH, cache_max_bytes=1024)
    monkeypatch.setattr(housekeeping, "_last_run", float("-inf"))
    housekeeping.run_if_due()
    assert not directory.exists() and storage.is_kept(location)


def test_a_file_damaged_on_its_way_from_the_store_is_refused(s3_endpoint, on_s3, monkeypatch):
    """Each downloaded file is compared with the whole-object CRC32 the store keeps: one byte
    flipped in transit fails the fetch, leaves no copy in the cache, and the next fetch gets it whole."""
    from training import object_store, storage

    directory = storage.checkpoint_directory(10, "s:crc:0", "weights", "w")
    directory.mkdir(parents=True)
    body = os.urandom(4096)
    (directory / "adapter_model.safetensors").write_bytes(body)
    location = storage.publish(directory)
    shutil.rmtree(on_s3 / "checkpoints")

    bucket = object_store.store().bucket
    download_file = bucket.download_file

    def damaged(key: str, filename: str) -> None:
        download_file(key, filename)
        with open(filename, "r+b") as handle:
            first = handle.read(1)
            handle.seek(0)
            handle.write(bytes([first[0] ^ 0x01]))

    monkeypatch.setattr(bucket, "download_file", damaged)
    with pytest.raises(OSError, match="arrived damaged"):
        storage.fetch(location)
    assert not directory.exists() and not list(on_s3.rglob("*.cached"))
    monkeypatch.setattr(bucket, "download_file", download_file)
    assert (storage.fetch(location) / "adapter_model.safetensors").read_bytes() == body
