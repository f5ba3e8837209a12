"""Hostile webdataset tars: repeated member names, a small .tar.gz holding a huge member, a stream over its budget."""
from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile

import pytest

from polycap.schemas import Reason
from polycap.schemas.config import IngestConfig, SourceConfig
from polycap.transforms.ingest import read_shard
from tests.conftest import jpeg_bytes
from tests.hostile.helpers import REPO, read_source, run_job


class _Zeros(io.RawIOBase):
    """n zero bytes, produced as read (a huge member without holding it)."""

    def __init__(self, n: int):
        self.left = n

    def readable(self):
        return True

    def readinto(self, b):
        k = min(len(b), self.left)
        b[:k] = bytes(k)
        self.left -= k
        return k


def _tar(path, members, mode="w"):
    kw = {"compresslevel": 1} if mode == "w:gz" else {}
    with tarfile.open(path, mode, **kw) as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if isinstance(data, int):
                info.size = data
                tf.addfile(info, io.BufferedReader(_Zeros(data), 1 << 20))
            else:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))


@pytest.mark.timeout(90)
def test_repeated_member_names_are_each_counted(tmp_path):
    imgs = [jpeg_bytes(96, 96, c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    shard = tmp_path / "in" / "s-000000.tar"
    shard.parent.mkdir()
    _tar(shard, [("a.jpg", imgs[0]), ("a.jpg", imgs[1]), ("a.JPG", imgs[2]), ("a.txt", b"a red square")])
    r = run_job(tmp_path, [{"kind": "webdataset", "path": str(shard.parent), "name": "w"}], timeout=80)
    assert r["rc"] == 0, r["stderr"]
    assert r["inputs"] == 3 and r["kept"] == 1 and r["rejected"] == 2
    assert [x["reason"] for x in r["rejects"]] == ["duplicate_member"] * 2
    assert r["written_outside"] == []


_READ = """
import sys
from polycap.schemas.config import IngestConfig, SourceConfig
from polycap.transforms.ingest import read_shard
from polycap.sharding import fs
def peak_kb():   # this process image's own peak (ru_maxrss would keep the forking pytest process's)
    return next(int(ln.split()[1]) for ln in open("/proc/self/status") if ln.startswith("VmHWM:"))
base = peak_kb()
with fs.open_read(sys.argv[1]) as f:
    out = list(read_shard(f, sys.argv[1], SourceConfig(kind="webdataset", path=sys.argv[1]), IngestConfig()))
print([(type(x).__name__, str(getattr(x, "reason", ""))) for x in out])
print((peak_kb() - base) // 1024)
"""


@pytest.mark.timeout(60)
def test_small_tgz_with_a_huge_member_stays_small(tmp_path):
    """A .tar.gz of ~1 MB holding a 256 MiB member (the hostile case had 6 GiB in 28 MB): the member is refused
    from its header size, skipped as a stream, and the image after it is still read; peak RSS stays small."""
    shard = tmp_path / "bomb.tar.gz"
    _tar(shard, [("big.jpg", 256 * 1024 * 1024), ("ok.jpg", jpeg_bytes())], mode="w:gz")
    assert shard.stat().st_size < 3_000_000
    res = subprocess.run([sys.executable, "-c", _READ, str(shard)], capture_output=True, text=True, timeout=50,
                         cwd=REPO)
    assert res.returncode == 0, res.stderr[-2000:]
    outcomes, grew_mb = res.stdout.splitlines()[-2:]
    assert outcomes == "[('Reject', 'too_large_input'), ('Sample', '')]"
    assert int(grew_mb) < 64          # peak RSS growth while reading; holding the member would add 256 MB


def test_tar_stream_over_max_tar_bytes_ends_with_one_reject(tmp_path):
    shard = tmp_path / "s.tar"
    _tar(shard, [(f"{i}.jpg", jpeg_bytes(64, 64, (i * 40, 0, 0))) for i in range(5)])
    src = SourceConfig(kind="webdataset", path=str(shard))
    with open(shard, "rb") as f:
        out = list(read_shard(f, str(shard), src, IngestConfig(max_tar_bytes=4096)))
    assert [getattr(x, "reason", "sample") for x in out][-1] == Reason.TOO_LARGE_INPUT
    assert "max_tar_bytes" in out[-1].detail and len(out) < 6


def test_tar_read_past_its_time_budget_is_a_read_timeout(tmp_path, monkeypatch):
    shard = tmp_path / "s.tar"
    _tar(shard, [("a.jpg", jpeg_bytes())])
    from polycap.transforms import ingest
    monkeypatch.setattr(ingest, "deadline_of", lambda cfg: 0.0)   # a deadline already passed
    with open(shard, "rb") as f:
        out = list(read_shard(f, str(shard), SourceConfig(kind="webdataset", path=str(shard)), IngestConfig()))
    assert [x.reason for x in out] == [Reason.READ_TIMEOUT]


def test_link_members_and_gz_text_are_not_followed(tmp_path):
    shard = tmp_path / "s.tar"
    with tarfile.open(shard, "w") as tf:
        link = tarfile.TarInfo("x.jpg")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(link)
    samples, rejects = read_source(SourceConfig(kind="webdataset", path=str(shard)))
    assert samples == [] and [r.reason for r in rejects] == [Reason.UNSAFE_PATH]
    assert json.dumps([r.source_uri for r in rejects])
