"""A run in waves SIGKILLed during its second wave, then rerun into the same output: the rerun skips the
finished wave and ends byte for byte like an uninterrupted run in waves (shards, manifest, reject rows)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from polycap.sharding.validate import validate_dir
from tests.hostile.test_recovery import _rerun_after_crash, _result
from tests.pipelines.test_waves import make_waves_input

REPO = Path(__file__).resolve().parents[2]


def _config(tmp: Path, src: Path, out: Path) -> Path:
    import json

    cfg = tmp / f"job-{out.name}.json"
    cfg.write_text(json.dumps({"sources": [{"kind": "dir", "path": str(src), "name": "r"}], "output": str(out),
                               "dedup": {"near": True}, "shards": {"split": "train", "max_samples": 3},
                               "run": {"wave_size": 4}}))
    return cfg


def _run(cfg: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "polycap.pipelines.cli", "run", str(cfg), "--progress", "0"],
                          cwd=REPO, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_sigkill_in_wave_two_then_rerun_equals_a_clean_waves_run(tmp_path, eval_dir):
    src = make_waves_input(tmp_path / "in", eval_dir)
    clean_out = tmp_path / "clean"
    res = _run(_config(tmp_path, src, clean_out))
    assert res.returncode == 0, res.stderr[-3000:]
    clean = _result(clean_out)

    out = tmp_path / "out"
    cfg = _config(tmp_path, src, out)
    proc = subprocess.Popen([sys.executable, "-m", "polycap.pipelines.cli", "run", str(cfg), "--progress", "0"],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    wave1 = out / "_waves" / "train" / "w000001"
    deadline = time.time() + 300
    # wave 0 is finished (its folder holds committed shards) and wave 1 has begun staging or writing
    while time.time() < deadline and proc.poll() is None and not (
            wave1.exists() and any((out / "_staging").rglob("*.jpg") if (out / "_staging").exists() else ())):
        time.sleep(0.005)
    alive = proc.poll() is None
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    if not alive:
        pytest.skip("the run finished before wave 1 was seen")
    assert (out / "_waves" / "train" / "w000000" / "manifest.parquet").exists()
    res = _rerun_after_crash(cfg)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "resuming; 1 of 3 waves were finished" in res.stderr
    assert validate_dir(str(out)).ok
    assert _result(out) == clean
    assert not (out / "_waves").exists()
