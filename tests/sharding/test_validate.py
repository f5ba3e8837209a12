"""Shard validator: truncation, corruption, layout and manifest mismatches are flagged; SIGKILL mid-run."""
from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from polycap.sharding.reader import ShardError, iter_samples
from polycap.sharding.validate import check_tar, validate_dir
from polycap.sharding.writer import TMP_RE, tar_info
from tests.sharding.conftest import run_write

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def good_run(photo_samples, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("good") / "run"
    run_write(photo_samples, str(out), max_samples=4)
    return out


@pytest.fixture
def run(good_run, tmp_path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(good_run, out)
    return out


def _shard(run: Path, i: int = 0) -> Path:
    return sorted((run / "shards").glob("train-*.tar"))[i]


def _member_ends(path: Path) -> list[int]:
    with tarfile.open(path) as tf:
        return [m.offset_data + -(-m.size // 512) * 512 for m in tf]


def test_good_run_is_ok_from_run_dir_and_shard_dir(run):
    rep = validate_dir(str(run))
    assert rep.ok, rep.errors
    assert rep.samples == 12 and len(rep.shards) == len(list((run / "shards").glob("*.tar"))) >= 3
    assert not rep.warnings
    assert validate_dir(str(run / "shards")).ok
    assert json.loads(json.dumps(rep.to_dict()))["ok"] is True


def test_tar_cut_on_a_member_boundary_is_flagged(run):
    """tarfile itself reads such a tar without complaint; the missing end blocks give it away."""
    p = _shard(run)
    cut = _member_ends(p)[-2]              # drops the last member and the end-of-archive blocks
    p.write_bytes(p.read_bytes()[:cut])
    _, errors, _ = check_tar(str(p))
    assert any("truncated" in e for e in errors)
    rep = validate_dir(str(run))
    assert not rep.ok and any("sha256" in e for e in rep.errors)


def test_tar_cut_inside_a_member_is_flagged_by_validator_and_reader(run):
    p = _shard(run)
    p.write_bytes(p.read_bytes()[: _member_ends(p)[0] - 300])
    _, errors, _ = check_tar(str(p))
    assert any("unreadable or truncated" in e for e in errors)
    assert not validate_dir(str(run)).ok
    with pytest.raises(ShardError):
        list(iter_samples(str(run)))


def test_flipped_bytes_are_flagged(run):
    p = _shard(run, 1)
    data = bytearray(p.read_bytes())
    start = _member_ends(p)[0] - 600       # inside the first jpg: the tar still parses
    data[start:start + 8] = bytes(8)
    p.write_bytes(bytes(data))
    rep = validate_dir(str(run))
    assert not rep.ok and any("sha256" in e and p.name in e for e in rep.errors)
    data[100] ^= 0xFF                       # inside the first header: checksum breaks
    p.write_bytes(bytes(data))
    assert any("unreadable" in e for e in validate_dir(str(run)).errors)


def test_manifest_mismatches_are_flagged(run):
    table = pq.read_table(run / "manifest.parquet")
    pq.write_table(table.slice(1), run / "manifest.parquet")          # one row fewer
    errs = validate_dir(str(run)).errors
    assert any("samples, manifest records" in e or "keys differ" in e for e in errs)
    pq.write_table(table, run / "manifest.parquet")
    shutil.copy(_shard(run, 0), run / "shards" / "train-000099.tar")   # unlisted copy: dup keys
    errs = validate_dir(str(run)).errors
    assert any("not in the manifest" in e for e in errs) and any("in both" in e for e in errs)
    os.remove(run / "shards" / "train-000099.tar")
    os.remove(_shard(run, 2))
    assert any("missing" in e for e in validate_dir(str(run)).errors)
    os.remove(run / "manifest.parquet")
    assert any("no manifest.parquet" in e for e in validate_dir(str(run)).errors)


def test_leftover_temp_file_is_a_warning_not_an_error(run):
    (run / "shards" / f".train-abc-000000-0000.tar.tmp-{'0' * 32}").write_bytes(b"half a tar")
    rep = validate_dir(str(run))
    assert rep.ok and any("leftover temp file" in w for w in rep.warnings)


def _tar(path: Path, members: list[tuple[str, bytes]]) -> str:
    with tarfile.open(path, "w") as tf:
        for name, data in members:
            tf.addfile(tar_info(name, len(data)), io.BytesIO(data))
    return str(path)


JPG = b"\xff\xd8\xff\xe0 jpeg"
K1, K2 = "a" * 32, "b" * 32


@pytest.mark.parametrize("members, expect", [
    ([(f"{K1}.jpg", JPG), (f"{K2}.jpg", JPG), (f"{K1}.json", b'{"key": "%s"}' % K1.encode())],
     "not adjacent"),
    ([(f"{K1}.jpg", JPG)], "has no json"),
    ([(f"{K1}.json", b'{"key": "%s"}' % K1.encode())], "has no jpg"),
    ([(f"{K1}.jpg", JPG), (f"{K1}.json", b'{"key": "%s"}' % K2.encode())], "json key is"),
    ([(f"{K1}.jpg", JPG), (f"{K1}.json", b"{not json")], "does not parse"),
    ([(f"{K1}.jpg", JPG), (f"{K1}.json", b'{"key": "%s", "captions": {"ko": {}}}' % K1.encode()),
      (f"{K1}.en.txt", b"x")], "txt languages"),
    ([(f"{K1}.jpg", JPG), (f"{K1}.jpg", JPG), (f"{K1}.json", b'{"key": "%s"}' % K1.encode())], "two jpg"),
    ([("noext", JPG)], "no extension"),
])
def test_layout_errors_are_named(tmp_path, members, expect):
    _, errors, _ = check_tar(_tar(tmp_path / "x-000000.tar", members))
    assert any(expect in e for e in errors), errors


SLOW_WRITER = r"""
import sys, time
sys.path.insert(0, sys.argv[1])
import apache_beam as beam
from polycap.schemas.config import ShardsConfig
from polycap.sharding import writer
from tests.sharding.conftest import decoded_sample, thumbnail_jpeg
from pathlib import Path

_write = writer._HashingWriter.write
def slow_write(self, b):          # a slow disk: each 10 KiB tar record lands in two halves, 0.1 s apart
    _write(self, b[: len(b) // 2])
    self.f.flush()
    time.sleep(0.1)
    return _write(self, b[len(b) // 2:]) + len(b) // 2
writer._HashingWriter.write = slow_write

photos = sorted(Path(sys.argv[2]).glob("*.png"))
samples = [decoded_sample(thumbnail_jpeg(photos[i % len(photos)], 64 + i), "p%d" % i, "slow")
           for i in range(40)]
with beam.Pipeline() as p:
    p | beam.Create(samples) | writer.WriteShards(ShardsConfig(split="train", max_samples=2), sys.argv[3])
"""


def _half_written(shards: Path) -> list[str]:
    """Temp tars caught between the two halves of a record (tar grows in whole 10 KiB records)."""
    return [n for n in os.listdir(shards) if ".tar.tmp-" in n and (shards / n).stat().st_size % 10240]


@pytest.mark.slow
def test_sigkill_mid_run_leaves_nothing_a_reader_accepts(run, eval_dir, photo_samples, tmp_path):
    """Kill a rerun while it writes; the previous shards stay valid, temps are ignored."""
    script = tmp_path / "slow_writer.py"
    script.write_text(SLOW_WRITER)
    proc = subprocess.Popen([sys.executable, str(script), str(REPO), str(eval_dir / "photos" / "skimage"),
                             str(run)], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    shards = run / "shards"
    deadline = time.time() + 120
    while not _half_written(shards):                          # kill exactly while a tar is half-written
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:] if proc.stderr else ""
        assert time.time() < deadline, "the slow writer never started a temp tar"
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL

    temps = [n for n in os.listdir(shards) if TMP_RE.match(n)]
    half = [n for n in temps if ".tar.tmp-" in n and any("truncated" in e for e in check_tar(str(shards / n))[1])]
    rep = validate_dir(str(run))
    # The kill came long before the commit step, so the previous run is intact and the temps only warn.
    assert rep.ok, rep.errors
    assert sum("leftover temp file" in w for w in rep.warnings) == len(temps) > 0
    assert half, f"expected a half-written temp tar among {temps}"
    old = {s.key: s for s in photo_samples}
    got = list(iter_samples(str(run)))
    assert sorted(g.key for g in got) == sorted(old) and all(g.jpg == old[g.key].image.bytes for g in got)

    # A complete rerun commits and removes every leftover.
    subprocess.run([sys.executable, "-c", SLOW_WRITER.replace("time.sleep(0.1)", "pass"), str(REPO),
                    str(eval_dir / "photos" / "skimage"), str(run)], cwd=REPO, check=True,
                   capture_output=True, timeout=300)
    rep = validate_dir(str(run))
    assert rep.ok and not rep.warnings and rep.samples == 40


def test_crash_inside_commit_is_flagged_then_repaired(run, photo_samples, monkeypatch):
    """A kill between the renames of step 4 leaves whole tars, mixed old/new: validate must flag it."""
    import dataclasses

    from apache_beam.io.filesystems import FileSystems

    real = FileSystems.rename

    def rename_one_then_die(src, dst):
        real(src[:1], dst[:1])
        if len(src) > 1:
            raise OSError("killed mid-commit")

    monkeypatch.setattr(FileSystems, "rename", staticmethod(rename_one_then_die))
    changed = [dataclasses.replace(s, captions={}) for s in photo_samples]   # same keys, new bytes
    with pytest.raises(Exception, match="killed mid-commit"):
        run_write(changed, str(run), max_samples=4)
    monkeypatch.undo()
    rep = validate_dir(str(run))
    assert not rep.ok and any("sha256" in e for e in rep.errors)
    assert all(not check_tar(str(p))[1] for p in (run / "shards").glob("train-*.tar"))   # all whole
    run_write(changed, str(run), max_samples=4)
    rep = validate_dir(str(run))
    assert rep.ok and not rep.warnings and all(not s.texts for s in iter_samples(str(run)))
