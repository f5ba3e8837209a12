"""Crash recovery: `polycap run` SIGKILLed at five points of its life, and an output filesystem that fills up,
each followed by a rerun into the same output that must equal a clean run byte for byte (shards, manifest,
reject rows), with `shards validate` agreeing."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from polycap.sharding.rejects import read_rejects
from polycap.sharding.validate import validate_dir

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory, eval_dir) -> Path:
    """Distinct files (real photos with a few bytes appended), enough work for a run to be caught midway,
    plus two files that are rejects."""
    src = tmp_path_factory.mktemp("recovery") / "src"
    src.mkdir()
    photos = [p for p in (eval_dir / "photos").rglob("*") if p.suffix.lower() in (".jpg", ".png")
              and "edge_formats" not in p.parts and p.stat().st_size < 3_000_000]
    for i in range(4):
        for p in photos:
            (src / f"{i}_{p.name}").write_bytes(p.read_bytes() + bytes([i]) * (i + 1))
    (src / "notes.jpg").write_text("not an image")
    (src / "empty.png").write_bytes(b"")
    return src


def _config(tmp: Path, src: Path, out: Path) -> Path:
    cfg = tmp / f"job-{out.name}.json"
    cfg.write_text(json.dumps({"sources": [{"kind": "dir", "path": str(src), "name": "r"}], "output": str(out),
                               "dedup": {"near": False}, "shards": {"split": "train", "max_samples": 6}}))
    return cfg


def _run(cfg: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "polycap.pipelines.cli", "run", str(cfg), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def _rerun_after_crash(cfg: Path) -> subprocess.CompletedProcess:
    """A killed run leaves its lock: the rerun refuses, says the holder is gone and how to clear it (exit 2),
    and the documented `--break-lock` then recovers. Killed before it took the lock: the rerun just runs."""
    res = _run(cfg)
    if res.returncode == 2 and "_lock" in res.stderr:
        assert "--break-lock" in res.stderr and "no longer running" in res.stderr, res.stderr[-2000:]
        res = _run(cfg, "--break-lock")
    return res


def _result(out: Path) -> dict:
    """What a reader trusts: committed shard bytes, manifest rows, reject rows (by input and reason)."""
    shards = {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
              for p in sorted(out.rglob("*.tar")) if ".tmp-" not in p.name}
    manifest = sorted(json.dumps(r, sort_keys=True, default=str)
                      for r in pq.read_table(out / "manifest.parquet").to_pylist())
    rejects = sorted((r["source_uri"], r["stage"], r["reason"]) for r in read_rejects(str(out)).to_pylist())
    return {"shards": shards, "manifest": manifest, "rejects": rejects}


@pytest.fixture(scope="module")
def clean(tmp_path_factory, photo_dir) -> dict:
    tmp = tmp_path_factory.mktemp("clean")
    out = tmp / "out"
    res = _run(_config(tmp, photo_dir, out))
    assert res.returncode == 0, res.stderr[-3000:]
    assert validate_dir(str(out)).ok
    return _result(out)


def _any(pattern: str) -> Callable[[Path], bool]:
    return lambda out: out.exists() and any(True for _ in out.rglob(pattern))


# When to kill, as seen from outside: the process has started; decoded images are staged; a shard is being
# written (its temp file exists); a shard is committed; the manifest is committed (stats not yet written).
KILL_POINTS = {
    "started": lambda out: True,
    "staged": lambda out: out.exists() and any(p.is_file() for p in (out / "_staging").rglob("*.jpg")),
    "shard_temp": _any("*.tar.tmp-*"),
    "shard_committed": lambda out: any(".tmp-" not in p.name for p in out.rglob("*.tar")) if out.exists() else False,
    "manifest": lambda out: (out / "manifest.parquet").exists(),
}


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_sigkill_then_rerun_equals_a_clean_run(tmp_path, photo_dir, clean, point):
    out = tmp_path / "out"
    cfg = _config(tmp_path, photo_dir, out)
    proc = subprocess.Popen([sys.executable, "-m", "polycap.pipelines.cli", "run", str(cfg)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    seen, deadline = KILL_POINTS[point], time.time() + 300
    while time.time() < deadline and proc.poll() is None and not seen(out):
        time.sleep(0.005)
    alive = proc.poll() is None
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    if not alive:
        pytest.skip(f"the run finished before point {point!r} was seen")
    report = validate_dir(str(out))
    if not (out / "manifest.parquet").exists():
        assert not report.ok                     # nothing committed is trusted without its manifest
    res = _rerun_after_crash(cfg)
    assert res.returncode == 0, res.stderr[-3000:]
    assert validate_dir(str(out)).ok
    assert _result(out) == clean
    assert not (out / "_staging").exists() or not any((out / "_staging").rglob("*.jpg"))


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_disk_full_fails_cleanly_and_a_rerun_with_space_equals_a_clean_run(tmp_path, photo_dir, clean):
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)]).returncode != 0:
        pytest.skip("this machine cannot mount a tmpfs")
    try:
        out = mnt / "out"
        cfg = _config(tmp_path, photo_dir, out)
        res = _run(cfg)
        assert res.returncode != 0                                  # the shards do not fit in 3 MB
        assert "No space left" in res.stderr or "ENOSPC" in res.stderr or "space" in res.stderr.lower()
        assert not validate_dir(str(out)).ok if out.exists() else True
        subprocess.run(["mount", "-o", "remount,size=512m", str(mnt)], check=True)
        res = _run(cfg)
        assert res.returncode == 0, res.stderr[-3000:]
        assert validate_dir(str(out)).ok
        assert _result(out) == clean
    finally:
        subprocess.run(["umount", "-l", str(mnt)])
