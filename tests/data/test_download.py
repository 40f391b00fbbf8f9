"""`ifcn data download` against a local HTTP server on 127.0.0.1: resume, checksums, unpacking.

No test reaches the internet: archives come from a server in a thread, the official table is
only checked for its shape.
"""

from __future__ import annotations

import hashlib
import io
import random
import re
import socket
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from ifcn import cli
from ifcn.config import load_schema
from ifcn.data import download
from ifcn.data.download import Archive, download_dataset
from ifcn.errors import IfcnError

PAYLOAD = random.Random(0).randbytes(150_000)  # incompressible: the archive is as long


def _tar_gz(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


ARCHIVE = _tar_gz({"fixture/a.txt": b"hello\n", "fixture/sub/b.bin": PAYLOAD})
MD5 = hashlib.md5(ARCHIVE).hexdigest()


class _Handler(BaseHTTPRequestHandler):
    """Serves `server.files`; honours `Range: bytes=N-`; can cut the first response short."""

    def do_GET(self):  # noqa: N802 (http.server's naming)
        srv = self.server
        srv.requests.append((self.path, self.headers.get("Range")))
        data = srv.files.get(self.path.lstrip("/"))
        if data is None:
            self.send_error(404)
            return
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if match:
            start = int(match.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if srv.cut_after is not None:
            body, srv.cut_after = body[: srv.cut_after], None  # then the connection drops
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.files, srv.requests, srv.cut_after = {"fixture.tar.gz": ARCHIVE}, [], None
    thread = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    yield srv
    srv.shutdown()
    srv.server_close()


def _table(url: str, md5: str = MD5) -> dict[str, tuple[Archive, ...]]:
    archive = Archive("fixture.tar.gz", (url,), f"md5:{md5}", ("fixture/a.txt", "fixture/sub"))
    return {"fixture": (archive,)}


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/fixture.tar.gz"


def _leftovers(out: Path) -> list[str]:
    """Partial downloads and unpacking folders: anything but finished results."""
    return sorted(p.name for p in out.iterdir() if p.name.endswith((".part", ".unpack")))


def test_interrupted_download_resumes_with_a_range_request(tmp_path, server):
    server.cut_after = 50_000
    out = tmp_path / "out"
    download_dataset("fixture", out, _table(f"{server.url}/fixture.tar.gz"), progress=False)
    assert server.requests == [("/fixture.tar.gz", None), ("/fixture.tar.gz", "bytes=50000-")]
    assert (out / "fixture/sub/b.bin").read_bytes() == PAYLOAD
    assert (out / "fixture.tar.gz").read_bytes() == ARCHIVE
    assert _leftovers(out) == []


def test_partial_file_left_by_a_killed_run_is_continued(tmp_path, server):
    out = tmp_path / "out"
    out.mkdir()
    (out / "fixture.tar.gz.part").write_bytes(ARCHIVE[:1234])
    download_dataset("fixture", out, _table(f"{server.url}/fixture.tar.gz"), progress=False)
    assert server.requests == [("/fixture.tar.gz", "bytes=1234-")]
    assert (out / "fixture/a.txt").read_text() == "hello\n"


def test_second_call_with_files_present_does_nothing(tmp_path, server):
    out = tmp_path / "out"
    table = _table(f"{server.url}/fixture.tar.gz")
    download_dataset("fixture", out, table, progress=False)
    (out / "fixture.tar.gz").unlink()
    before = len(server.requests)
    lines = download_dataset("fixture", out, table, progress=False)
    assert len(server.requests) == before
    assert lines == [f"fixture.tar.gz: already unpacked in {out}"]


def test_corrupted_archive_is_rejected_with_both_checksums_and_nothing_is_left(tmp_path, server):
    corrupted = bytearray(ARCHIVE)
    corrupted[500] ^= 0xFF
    server.files["fixture.tar.gz"] = bytes(corrupted)
    out = tmp_path / "out"
    url = f"{server.url}/fixture.tar.gz"
    with pytest.raises(IfcnError) as exc:
        download_dataset("fixture", out, _table(url), progress=False)
    msg = str(exc.value)
    assert url in msg and f"expected md5 {MD5}" in msg
    assert f"got {hashlib.md5(corrupted).hexdigest()}" in msg
    assert str(out / "fixture.tar.gz") in msg
    assert sorted(p.name for p in out.iterdir()) == []


def test_archive_that_fails_to_unpack_leaves_nothing_half_unpacked(tmp_path, server):
    truncated = ARCHIVE[: len(ARCHIVE) // 2]
    server.files["fixture.tar.gz"] = truncated
    out = tmp_path / "out"
    table = _table(f"{server.url}/fixture.tar.gz", hashlib.md5(truncated).hexdigest())
    with pytest.raises(IfcnError, match="cannot unpack"):
        download_dataset("fixture", out, table, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["fixture.tar.gz"]


def test_offline_error_names_url_checksum_and_where_to_place_the_archive(tmp_path):
    url = _closed_port_url()
    out = tmp_path / "out"
    with pytest.raises(IfcnError) as exc:
        download_dataset("fixture", out, _table(url), progress=False)
    msg = str(exc.value)
    assert "\n" not in msg
    assert f"cannot download {url}" in msg and f"md5:{MD5}" in msg
    assert f"at {out / 'fixture.tar.gz'} by hand" in msg
    assert _leftovers(out) == []


def test_archive_placed_by_hand_is_verified_and_used_offline(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "fixture.tar.gz").write_bytes(ARCHIVE)
    download_dataset("fixture", out, _table(_closed_port_url()), progress=False)
    assert (out / "fixture/sub/b.bin").read_bytes() == PAYLOAD


def test_archive_placed_by_hand_with_a_bad_checksum_is_kept_and_reported(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "fixture.tar.gz").write_bytes(b"not the archive")
    with pytest.raises(IfcnError, match=f"expected md5 {MD5}, got "):
        download_dataset("fixture", out, _table(_closed_port_url()), progress=False)
    assert (out / "fixture.tar.gz").exists() and not (out / "fixture").exists()


def test_mirror_is_tried_before_the_official_url(tmp_path, server):
    out = tmp_path / "out"
    table = _table(_closed_port_url())
    download_dataset("fixture", out, table, mirror=server.url + "/", progress=False)
    assert server.requests == [("/fixture.tar.gz", None)]


def test_cli_downloads_from_the_table_and_removes_archives_on_request(
    tmp_path, server, monkeypatch, capsys
):
    monkeypatch.setattr(download, "DATASETS", _table(f"{server.url}/fixture.tar.gz"))
    out = tmp_path / "out"
    argv = ["data", "download", "--dataset", "fixture", "--out", str(out), "--quiet"]
    assert cli.main([*argv, "--remove-archives"]) == 0
    assert "fixture.tar.gz: verified and unpacked" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["fixture"]


def test_official_table_covers_every_downloadable_dataset_with_a_checksum():
    enum = load_schema()["properties"]["data"]["properties"]["dataset"]["enum"]
    assert set(download.DATASETS) == set(enum) - {"synthetic", "coco"}
    for archives in download.DATASETS.values():
        for a in archives:
            algorithm, _, digest = a.checksum.partition(":")
            assert algorithm == "md5" and re.fullmatch(r"[0-9a-f]{32}", digest)
            assert a.urls and all(u.startswith(("http://", "https://")) for u in a.urls)
            assert all(u.endswith("/" + a.filename) for u in a.urls) and a.provides
