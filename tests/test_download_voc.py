"""Tests of data_scripts/download_voc.py against a loopback HTTP server (no network
needed)."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import sys
import tarfile
import threading
import urllib.error
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from ssd_tutorial.data import VOC_CLASSES, ShapesDataset, VOCDataset, write_voc_split

REPO = Path(__file__).resolve().parents[1]


def _load_script():
    spec = importlib.util.spec_from_file_location(
        "download_voc", REPO / "data_scripts" / "download_voc.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


download_voc = _load_script()


class _Server:
    """Serves ``files`` (name -> bytes) on 127.0.0.1 with HTTP Range support; logs the
    requests.

    ``cut_after``: the first response sends only that many bytes of the body, then
    closes the connection (a dropped download: the full Content-Length was promised).
    """

    def __init__(self, files: dict[str, bytes], cut_after: int | None = None) -> None:
        self.files = files
        self.cut_after = cut_after
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep test output quiet
                pass

            def do_GET(self) -> None:
                name = self.path.lstrip("/")
                byte_range = self.headers.get("Range")
                server.requests.append((name, byte_range))
                if name not in server.files:
                    self.send_error(404)
                    return
                data = server.files[name]
                start = 0
                if byte_range:
                    start = int(byte_range.removeprefix("bytes=").split("-")[0])
                    if start >= len(data):
                        self.send_error(416)
                        return
                    self.send_response(206)
                    self.send_header(
                        "Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}"
                    )
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                body = data[start:]
                if server.cut_after is not None:
                    body, server.cut_after = body[: server.cut_after], None
                    self.close_connection = True
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def __enter__(self) -> _Server:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _voc_tar(tmp_path: Path) -> bytes:
    """A small VOC2007 trainval tar with the real layout:
    VOCdevkit/VOC2007/{JPEGImages,...}."""
    staging = tmp_path / "staging"
    write_voc_split(
        ShapesDataset(3, image_size=64, seed=1),
        staging / "VOCdevkit" / "VOC2007",
        "trainval",
        VOC_CLASSES,
    )
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(staging / "VOCdevkit", arcname="VOCdevkit")
    return buffer.getvalue()


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def _argv(server: _Server, out: Path, data: bytes) -> list[str]:
    return [
        "--out",
        str(out),
        "--archives",
        "voc2007_trainval",
        "--base-url",
        server.url,
        "--md5",
        f"voc2007_trainval={_md5(data)}",
        "--no-progress",
    ]


FILENAME = download_voc.ARCHIVES["voc2007_trainval"].filename


def test_download_extract_and_read(tmp_path: Path) -> None:
    data = _voc_tar(tmp_path)
    with _Server({FILENAME: data}) as server:
        assert download_voc.main(_argv(server, tmp_path / "out", data)) == 0
        dataset = VOCDataset(tmp_path / "out" / "VOCdevkit" / "VOC2007", "trainval")
        assert len(dataset) == 3 and dataset[0][0].shape == (3, 64, 64)
        # Idempotent: a second run sends no request at all.
        before = len(server.requests)
        assert download_voc.main(_argv(server, tmp_path / "out", data)) == 0
        assert len(server.requests) == before


def test_resume_after_partial_file(tmp_path: Path) -> None:
    data = _voc_tar(tmp_path)
    out = tmp_path / "out"
    part = out / "downloads" / (FILENAME + ".part")
    part.parent.mkdir(parents=True)
    half = len(data) // 2
    part.write_bytes(data[:half])
    with _Server({FILENAME: data}) as server:
        assert download_voc.main(_argv(server, out, data)) == 0
    # only the missing half was asked for
    assert server.requests == [(FILENAME, f"bytes={half}-")]
    assert (out / "downloads" / FILENAME).read_bytes() == data
    assert not part.exists()


def test_dropped_connection_keeps_the_part_file_for_resume(tmp_path: Path) -> None:
    # The server promises the whole file and closes after half of it: that is a network
    # failure, not a bad checksum, so the half already on disk must stay and the next
    # try resume from it.
    data = _voc_tar(tmp_path)
    half = len(data) // 2
    md5 = hashlib.md5(data).hexdigest()
    dest = tmp_path / "t.tar"
    part = tmp_path / "t.tar.part"
    with _Server({"t.tar": data}, cut_after=half) as server:
        with pytest.raises(urllib.error.URLError, match="rerun to resume"):
            download_voc.download(f"{server.url}/t.tar", dest, md5, progress=False)
        assert part.read_bytes() == data[:half]
        download_voc.download(f"{server.url}/t.tar", dest, md5, progress=False)
    assert server.requests[-1] == ("t.tar", f"bytes={half}-")
    assert dest.read_bytes() == data and not part.exists()


def test_checksum_mismatch_fails_and_deletes(tmp_path: Path) -> None:
    data = _voc_tar(tmp_path)
    archive = download_voc.Archive("t", "t.tar", "0" * 32, ())
    with _Server({"t.tar": data}) as server:
        dest = tmp_path / "t.tar"
        with pytest.raises(ValueError, match="MD5 .* does not match"):
            download_voc.download(
                f"{server.url}/t.tar", dest, archive.md5, progress=False
            )
    assert not dest.exists() and not (tmp_path / "t.tar.part").exists()


def _tar_with(member: tarfile.TarInfo, payload: bytes = b"x") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        ok = tarfile.TarInfo("VOCdevkit/fine.txt")
        ok.size = 1
        tar.addfile(ok, io.BytesIO(b"y"))
        if member.isfile():
            member.size = len(payload)
            tar.addfile(member, io.BytesIO(payload))
        else:
            tar.addfile(member)
    return buffer.getvalue()


def _symlink(name: str, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.SYMTYPE
    info.linkname = target
    return info


def _device(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.CHRTYPE
    return info


@pytest.mark.parametrize(
    ("member", "message"),
    [
        (tarfile.TarInfo("../evil.txt"), "escapes the target folder"),
        (tarfile.TarInfo("/etc/evil_absolute.txt"), "escapes the target folder"),
        (tarfile.TarInfo("VOCdevkit/../../evil.txt"), "escapes the target folder"),
        (_symlink("VOCdevkit/link", "/etc/passwd"), "refusing link member"),
        (_device("VOCdevkit/dev"), "refusing special member"),
    ],
)
def test_malicious_archive_is_refused(
    tmp_path: Path, member: tarfile.TarInfo, message: str, capsys
) -> None:
    data = _tar_with(member)
    out = tmp_path / "out"
    with _Server({FILENAME: data}) as server:
        assert download_voc.main(_argv(server, out, data)) == 2
        assert message in capsys.readouterr().err
        with pytest.raises(ValueError, match=message):
            download_voc.main([*_argv(server, out, data), "--debug"])
    assert not (tmp_path / "evil.txt").exists()
    assert not (out / "VOCdevkit" / "fine.txt").exists()  # nothing extracted at all
    assert not (out / ".voc2007_trainval.extracted").exists()


@pytest.mark.parametrize("kind", ["not a tar", "truncated"])
def test_unreadable_archive_is_named_and_moved_aside(
    tmp_path: Path, kind: str, capsys
) -> None:
    """An archive whose MD5 matched (as given) but that does not read as a tar: the
    error names it and it is renamed <name>.bad, so that the rerun downloads it again
    instead of failing again."""
    good = _voc_tar(tmp_path)
    bad = (
        b"<html>not a tar archive</html>" * 50
        if kind == "not a tar"
        else good[: len(good) // 2]
    )
    out = tmp_path / "out"
    with _Server({FILENAME: bad}) as server:
        assert download_voc.main(_argv(server, out, bad)) == 2
    err = capsys.readouterr().err
    assert (
        f"{FILENAME}: not a readable tar archive" in err
        and f"moved it to {FILENAME}.bad" in err
    )
    assert err.splitlines()[-1].startswith("error: ")
    assert (out / "downloads" / f"{FILENAME}.bad").read_bytes() == bad
    assert (
        not (out / "downloads" / FILENAME).exists()
        and not (out / ".voc2007_trainval.extracted").exists()
    )
    with _Server({FILENAME: good}) as server:
        assert download_voc.main(_argv(server, out, good)) == 0
    assert len(VOCDataset(out / "VOCdevkit" / "VOC2007", "trainval")) == 3


def test_bad_md5_flag_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        download_voc.main(["--out", str(tmp_path), "--md5", "voc2007_trainval=abc"])


def test_constants_agree_with_torchvision() -> None:
    from torchvision.datasets.voc import DATASET_YEAR_DICT

    theirs = {
        DATASET_YEAR_DICT[k]["filename"]: DATASET_YEAR_DICT[k]["md5"]
        for k in ("2007", "2007-test", "2012")
    }
    ours = {a.filename: a.md5 for a in download_voc.ARCHIVES.values()}
    assert ours == theirs
    for archive in download_voc.ARCHIVES.values():
        assert all(
            url.startswith("https://") and url.endswith(archive.filename)
            for url in archive.urls
        )
