"""Hostile inputs the project already handled, kept here so the suite covers the whole list: redirect loops,
bad schemes, decompression bombs, path traversal in tars, a read-only output, and the trainer on shards
where no sample has text."""
from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import tarfile
import zlib

import pytest

from polycap.schemas import Reason
from polycap.schemas.config import IngestConfig, SourceConfig
from polycap.transforms.fetch import FetchError, fetch
from tests.conftest import jpeg_bytes
from tests.hostile.helpers import REPO, run_job
from tests.hostile.test_network import serve  # noqa: F401 - the fixture

LOCAL = IngestConfig(timeout_s=2.0, connect_timeout_s=1.0, retries=0, allow_private_addresses=True)


@pytest.mark.timeout(20)
def test_redirect_loop_ends_at_the_hop_limit(serve):  # noqa: F811
    def loop(conn, req):
        path = req.split(b" ", 2)[1]
        conn.sendall(b"HTTP/1.0 302 Found\r\nLocation: " + path + b"x\r\nContent-Length: 0\r\n\r\n")
    srv = serve(loop)
    with pytest.raises(FetchError) as e:
        fetch(srv.url + "/a", LOCAL)
    assert e.value.reason == Reason.DOWNLOAD_FAILED and "redirect" in e.value.detail.lower()
    assert len(srv.requests) <= 6                          # the first request + at most 5 redirects


BAD_URLS = ["ftp://127.0.0.1/a.jpg", "file:///etc/passwd", "javascript:alert(1)", "data:image/png;base64,AAAA",
            "gopher://x/", "//x.y/a.jpg", "http://", "http://[::1", "http://example.com/a\r\nX-Injected: 1"]


@pytest.mark.timeout(60)
def test_bad_schemes_and_malformed_urls_are_rejects_without_a_lookup(tmp_path, monkeypatch):
    import json
    import socket

    from tests.hostile.helpers import read_source

    def no_dns(*a, **k):
        raise AssertionError(f"resolved {a[0]!r}")
    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    lst = tmp_path / "urls.jsonl"
    lst.write_text("".join(json.dumps({"url": u}) + "\n" for u in BAD_URLS))
    samples, rejects = read_source(SourceConfig(kind="urls", path=str(lst)), LOCAL)
    assert samples == [] and len(rejects) == len(BAD_URLS)
    assert {r.reason for r in rejects} == {Reason.INVALID_URL}, [(r.source_uri, r.reason) for r in rejects]


def _bomb_png(w: int = 30000, h: int = 30000) -> bytes:
    def chunk(t: bytes, d: bytes) -> bytes:
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * (w // 8 + 1) * 64)) + chunk(b"IEND", b""))


@pytest.mark.timeout(120)
def test_bombs_and_tar_traversal_are_rejects_and_nothing_leaves_the_output(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    (src / "good.jpg").write_bytes(jpeg_bytes(96, 96))
    (src / "bomb.png").write_bytes(_bomb_png())
    tar = tmp_path / "evil.tar"
    with tarfile.open(tar, "w") as tf:
        for i, name in enumerate(("../../escaped.jpg", "/tmp/absolute.jpg", "ok.jpg")):
            data = jpeg_bytes(80 + i, 80, (200, 60 * i, 10))
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    r = run_job(tmp_path, [{"kind": "dir", "path": str(src), "name": "d"},
                           {"kind": "webdataset", "path": str(tar), "name": "t"}], timeout=110,
                dedup={"near": False})
    assert r["rc"] == 0, r["stderr"]
    assert r["inputs"] == r["kept"] + r["rejected"] and r["kept"] == 2
    reasons = sorted(x["reason"] for x in r["rejects"])
    assert reasons == ["decompression_bomb", "unsafe_path", "unsafe_path"], reasons
    assert not (tmp_path.parent / "escaped.jpg").exists() and not os.path.exists("/tmp/absolute.jpg")
    assert r["written_outside"] == [] and r["maxrss_mb"] < 1000


@pytest.mark.timeout(120)
def test_read_only_output_fails_with_a_clear_error(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    if os.geteuid() == 0:       # root writes through file modes: make the output a read-only filesystem
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(out)]).returncode != 0:
            pytest.skip("cannot mount a read-only tmpfs here")
    else:
        out.chmod(0o555)
    try:
        src = tmp_path / "in"
        src.mkdir()
        (src / "a.jpg").write_bytes(jpeg_bytes(96, 96))
        r = run_job(tmp_path, [{"kind": "dir", "path": str(src), "name": "d"}], timeout=110)
        assert r["rc"] not in (0, None)
        assert "read-only" in r["stderr"].lower() or "permission denied" in r["stderr"].lower(), r["stderr"]
        assert "Traceback" not in r["stderr"]
        assert r["written_outside"] == []
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", "-l", str(out)])
        else:
            out.chmod(0o755)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_trainer_on_shards_without_text_stops_with_the_skip_counts(tmp_path):
    pytest.importorskip("torch")
    src = tmp_path / "in"
    src.mkdir()
    for i in range(6):                                  # images with no caption: nothing to learn from
        (src / f"{i}.jpg").write_bytes(jpeg_bytes(96 + i, 96, (40 * i, 90, 200)))
    r = run_job(tmp_path, [{"kind": "dir", "path": str(src), "name": "d"}], timeout=110)
    assert r["rc"] == 0 and r["kept"] == 6, r["stderr"]
    res = subprocess.run([sys.executable, "-m", "polycap.pipelines.cli", "train", "pretrain",
                          str(REPO / "configs" / "train-tiny.yaml"), "--shards", str(tmp_path / "out"),
                          "--set", f"train.out_dir={tmp_path / 'train'}", "--set", "train.num_threads=1"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=550)
    assert res.returncode not in (0, None)
    assert "all 6 samples were skipped" in res.stderr and "no_text" in res.stderr, res.stderr[-2000:]
