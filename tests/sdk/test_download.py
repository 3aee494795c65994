"""Signed-file downloads against a small local HTTP server: resume with Range from a `.part` file,
start over when Range is ignored, verify the checksum, survive a dropped connection."""

from __future__ import annotations

import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import lorasmith
from lorasmith._internal import download as download_module
from lorasmith._internal.download import download

PAYLOAD = bytes(range(256)) * 400  # 102,400 bytes


class FileServer:
    def __init__(self):
        self.honour_range = True
        self.refuse = False
        self.checksum = hashlib.sha256(PAYLOAD).hexdigest()
        self.drop_first_after: int | None = None  # bytes sent before the first response is cut
        self.ranges: list[str | None] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                if server.refuse:
                    self.send_response(403)
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"no")
                    return
                requested = self.headers.get("Range")
                server.ranges.append(requested)
                start = int(requested[6:-1]) if requested and server.honour_range else 0
                body = PAYLOAD[start:]
                self.send_response(206 if start else 200)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
                self.send_header("Content-Length", str(len(body)))
                if server.checksum:
                    self.send_header("X-Checksum-Sha256", server.checksum)
                self.end_headers()
                if server.drop_first_after is not None:
                    body, server.drop_first_after = body[: server.drop_first_after], None
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/file.bin"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def files():
    server = FileServer()
    yield server
    server.httpd.shutdown()


@pytest.fixture(autouse=True)
def no_sleep(monkeypatch):
    monkeypatch.setattr(download_module.time, "sleep", lambda seconds: None)


def test_resumes_from_the_part_file(files, tmp_path):
    (tmp_path / "file.bin.part").write_bytes(PAYLOAD[:1000])
    assert download(files.url, tmp_path / "file.bin").read_bytes() == PAYLOAD
    assert files.ranges == ["bytes=1000-"]
    assert not (tmp_path / "file.bin.part").exists()


def test_starts_over_when_the_server_ignores_range(files, tmp_path):
    files.honour_range = False
    (tmp_path / "file.bin.part").write_bytes(b"stale bytes")
    assert download(files.url, tmp_path / "file.bin").read_bytes() == PAYLOAD


def test_a_dropped_connection_resumes(files, tmp_path):
    files.drop_first_after = 5000
    assert download(files.url, tmp_path / "file.bin", progress=True).read_bytes() == PAYLOAD
    assert files.ranges == [None, "bytes=5000-"]


def test_checksum_mismatch_is_an_error_and_drops_the_part(files, tmp_path):
    files.checksum = "0" * 64
    with pytest.raises(lorasmith.LorasmithError, match="checksum mismatch"):
        download(files.url, tmp_path / "file.bin")
    assert not (tmp_path / "file.bin.part").exists() and not (tmp_path / "file.bin").exists()


def test_an_expired_link_is_permission_denied(files, tmp_path):
    files.refuse = True
    with pytest.raises(lorasmith.PermissionDeniedError, match="expired or invalid"):
        download(files.url, tmp_path / "file.bin")


def test_without_a_checksum_header_the_size_is_still_checked(files, tmp_path):
    files.checksum = None
    assert download(files.url, tmp_path / "file.bin").read_bytes() == PAYLOAD
