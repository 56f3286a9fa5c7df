"""Weights downloads over loopback HTTP: one download for two processes, resume, checksum.

A real :mod:`http.server` on 127.0.0.1 serves a checkpoint the test writes; it honours
``Range: bytes=N-`` and can be told to cut its first response off half way.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import torch

from cbirlib.errors import ChecksumError, WeightsError
from cbirlib.weights import download, download_path, load_state_dict

ROOT = Path(__file__).resolve().parents[1]


class Server:
    """A loopback server of one file; records every request."""

    def __init__(self, payload: bytes, *, chunk_delay: float = 0.0) -> None:
        self.payload = payload
        self.chunk_delay = chunk_delay
        self.cut_next = 0  # responses to cut off after half their bytes
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                start = 0
                header = self.headers.get("Range")
                if header and header.startswith("bytes="):
                    start = int(header[len("bytes=") :].split("-", 1)[0])
                body = server.payload[start:]
                if start >= len(server.payload):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(server.payload)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    server.record(header, 0, False)
                    return
                self.send_response(206 if start else 200)
                if start:
                    total = len(server.payload)
                    self.send_header("Content-Range", f"bytes {start}-{total - 1}/{total}")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                with server.lock:
                    cut = server.cut_next > 0
                    server.cut_next -= int(cut)
                send = body[: len(body) // 2] if cut else body
                # recorded before sending: the client may be done (and the test reading
                # the record) before this thread runs again after its last write
                server.record(header, len(send), not cut)
                for i in range(0, len(send), 1 << 16):
                    self.wfile.write(send[i : i + (1 << 16)])
                    self.wfile.flush()
                    time.sleep(server.chunk_delay)
                if cut:
                    self.close_connection = True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/models/w.pth"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def record(self, range_header: str | None, sent: int, complete: bool) -> None:
        with self.lock:
            self.requests.append({"range": range_header, "sent": sent, "complete": complete})

    @property
    def full_downloads(self) -> int:
        return sum(1 for r in self.requests if r["range"] is None and r["complete"])

    @property
    def bytes_sent(self) -> int:
        return sum(r["sent"] for r in self.requests)


@pytest.fixture
def checkpoint(tmp_path: Path) -> tuple[bytes, str]:
    """A real torch checkpoint (a few MB) and its sha256."""
    torch.manual_seed(0)
    path = tmp_path / "made.pth"
    torch.save({"state_dict": {"w": torch.randn(600, 1000), "b": torch.randn(1000)}}, path)
    data = path.read_bytes()
    return data, hashlib.sha256(data).hexdigest()


@pytest.fixture
def online(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """Downloads allowed (the test suite runs with HF_HUB_OFFLINE=1), into a fresh cache."""
    import huggingface_hub.constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    # the downloader writes in chunks of 10 MB, more than the test's file: smaller ones, so
    # that a cut-off transfer has written some to resume from (as a real checkpoint has)
    monkeypatch.setattr(huggingface_hub.constants, "DOWNLOAD_CHUNK_SIZE", 1 << 16)
    cache = tmp_path / "cache"
    monkeypatch.setenv("CBIRLIB_CACHE", str(cache))
    yield cache


def serve(payload: bytes, **kwargs: Any) -> Server:
    server = Server(payload, **kwargs)
    server.thread.start()
    return server


@pytest.fixture
def stop() -> Iterator[list[Server]]:
    servers: list[Server] = []
    yield servers
    for server in servers:
        server.httpd.shutdown()
        server.httpd.server_close()


def test_two_processes_fetching_one_url_download_it_once(
    checkpoint: tuple[bytes, str], online: Path, stop: list[Server]
) -> None:
    data, digest = checkpoint
    server = serve(data, chunk_delay=0.02)  # slow enough for the two to overlap
    stop.append(server)
    code = (
        "import sys; from cbirlib.weights import download; "
        "print(download(sys.argv[1], sha256=sys.argv[2]))"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    env.pop("HF_HUB_OFFLINE", None)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, server.url, digest],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in results]
    paths = {out.strip() for out, _ in results}
    target = download_path(server.url, directory=online)
    assert paths == {str(target)}
    assert hashlib.sha256(target.read_bytes()).hexdigest() == digest
    assert server.full_downloads == 1 and len(server.requests) == 1
    assert [p.name for p in target.parent.iterdir()] == [target.name]  # no .part, no lock


def test_a_download_cut_off_half_way_is_resumed_with_a_range_request(
    checkpoint: tuple[bytes, str], online: Path, stop: list[Server]
) -> None:
    data, digest = checkpoint
    server = serve(data)
    stop.append(server)
    server.cut_next = 1
    path = download(server.url, sha256=digest)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
    half = len(data) // 2
    assert server.requests[0] == {"range": None, "sent": half, "complete": False}
    # resumed from the last whole chunk written before the cut: a range, never from 0
    resumed = server.requests[1]
    start = int(resumed["range"].removeprefix("bytes=").rstrip("-"))
    assert 0 < start <= half and resumed["complete"] and len(server.requests) == 2
    assert resumed["sent"] == len(data) - start
    assert set(load_state_dict(path)) == {"w", "b"}


def test_a_half_part_file_left_by_an_earlier_run_is_resumed(
    checkpoint: tuple[bytes, str], online: Path, stop: list[Server]
) -> None:
    data, digest = checkpoint
    server = serve(data)
    stop.append(server)
    target = download_path(server.url)
    target.parent.mkdir(parents=True)
    part = target.with_name(target.name + ".part")
    part.write_bytes(data[:1000])
    assert download(server.url, sha256=digest) == target
    assert target.read_bytes() == data and not part.exists()
    assert [r["range"] for r in server.requests] == ["bytes=1000-"]
    assert server.bytes_sent == len(data) - 1000


def test_a_corrupt_part_file_is_downloaded_again(
    checkpoint: tuple[bytes, str], online: Path, stop: list[Server]
) -> None:
    data, digest = checkpoint
    server = serve(data)
    stop.append(server)
    target = download_path(server.url)
    target.parent.mkdir(parents=True)
    target.with_name(target.name + ".part").write_bytes(b"\0" * 5000)  # not the file's start
    assert download(server.url, sha256=digest).read_bytes() == data
    assert [r["range"] for r in server.requests] == ["bytes=5000-", None]


def test_a_wrong_sha256_raises_and_leaves_no_file(
    checkpoint: tuple[bytes, str], online: Path, stop: list[Server]
) -> None:
    data, digest = checkpoint
    server = serve(data)
    stop.append(server)
    with pytest.raises(ChecksumError, match=digest) as err:
        download(server.url, sha256="0" * 64)
    assert isinstance(err.value, WeightsError)
    target = download_path(server.url)
    assert not target.exists() and not target.with_name(target.name + ".part").exists()
    assert server.full_downloads == 1


def test_a_server_that_stays_down_keeps_the_part_file_to_resume(
    checkpoint: tuple[bytes, str], online: Path, stop: list[Server], monkeypatch: pytest.MonkeyPatch
) -> None:
    data, digest = checkpoint
    server = serve(data)
    stop.append(server)
    server.cut_next = 100  # every response is cut: the downloader gives up
    monkeypatch.setattr("huggingface_hub.file_download.time.sleep", lambda s: None)
    with pytest.raises(WeightsError, match=r"run again to resume") as err:
        download(server.url, sha256=digest)
    assert "bytes kept in" in str(err.value)
    target = download_path(server.url)
    assert not target.exists() and target.with_name(target.name + ".part").stat().st_size > 0
    server.cut_next = 0
    assert download(server.url, sha256=digest).read_bytes() == data
