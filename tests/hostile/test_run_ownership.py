"""What `polycap run` owns in its output: the lock against a second run, no output inside an input (nor the
reverse), per-split rejects and stats, live progress lines and a summary of everything written."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from polycap.pipelines.cli import EXIT_OK, EXIT_USAGE, app
from polycap.sharding.lock import LOCK_NAME
from polycap.sharding.rejects import read_rejects
from polycap.sharding.validate import validate_dir

REPO = Path(__file__).resolve().parents[2]


def images(folder: Path, n: int, seed: int = 0, bad: int = 1) -> Path:
    """`n` distinct small PNGs plus `bad` files that are not images (each one a `not_an_image` reject)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (96 + 8 * i, 80), (200, (40 * i + seed) % 256, 30 + seed)).save(folder / f"{seed}_{i}.png")
    for i in range(bad):
        (folder / f"{seed}_bad{i}.jpg").write_bytes(f"not an image {seed} {i}".encode())
    return folder


def job(tmp_path: Path, source: Path | str, out: Path | str, split: str = "train", name: str = "job.yaml") -> str:
    f = tmp_path / name
    f.write_text(f"sources: [{{kind: dir, path: '{source}'}}]\noutput: '{out}'\ndedup: {{near: false}}\n"
                 f"shards: {{split: {split}}}\n")
    return str(f)


def cli(*argv: str):
    return CliRunner().invoke(app, list(argv))


def stats(out: Path, split: str) -> dict:
    return json.loads((out / "_stats" / f"{split}.json").read_text())


# ---------------------------------------------------------------- lock

_HOLD = """
import pathlib, sys, time
import polycap.pipelines.run as r
real = r._clear_staging_after
marker, go = pathlib.Path(sys.argv[2]), pathlib.Path(sys.argv[3])
def held(counts, out):                       # the job pauses after its shard commit until the test says go
    marker.write_text("reached")
    deadline = time.time() + 120
    while not go.exists() and time.time() < deadline:
        time.sleep(0.05)
    return real(counts, out)
r._clear_staging_after = held
from polycap.pipelines.cli import main
sys.argv = ["polycap", "run", sys.argv[1], "--progress", "0"]
main()
"""


def test_a_second_run_into_the_same_output_refuses_naming_the_holder(tmp_path):
    out = tmp_path / "out"
    src = images(tmp_path / "a", 4)
    marker, go = tmp_path / "reached", tmp_path / "go"
    first = subprocess.Popen([sys.executable, "-c", _HOLD, job(tmp_path, src, out), str(marker), str(go)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        deadline = time.time() + 120
        while not marker.exists() and first.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert marker.exists(), first.communicate()[1][-3000:]
        holder = json.loads((out / LOCK_NAME).read_text())
        assert holder["pid"] == first.pid and holder["split"] == "train"
        # the second run (another split, other inputs) refuses before writing anything
        src_b = images(tmp_path / "b", 3, seed=7)
        before = sorted(p.relative_to(out) for p in out.rglob("*"))
        res = cli("run", job(tmp_path, src_b, out, split="val", name="b.yaml"), "--progress", "0")
        assert res.exit_code == EXIT_USAGE, res.output
        assert f"in use by run {holder['run_id']}" in res.stderr and f"pid {first.pid}" in res.stderr
        assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
        assert any(w.startswith(f"{LOCK_NAME}: locked by run {holder['run_id']}")     # validate says so too
                   for w in validate_dir(str(out)).warnings)
    finally:
        go.write_text("go")
        _, err = first.communicate(timeout=120)
    assert first.returncode == 0, err[-3000:]
    assert not (out / LOCK_NAME).exists()
    st = stats(out, "train")
    assert st["balanced"] and (st["kept"], st["rejected"]) == (4, 1)
    assert read_rejects(str(out)).num_rows == st["rejected"]
    assert not (out / "_stats" / "val.json").exists() and not (out / "rejects" / "val").exists()
    rep = validate_dir(str(out))
    assert rep.ok and rep.samples == st["kept"], rep.errors
    assert not any(LOCK_NAME in w for w in rep.warnings)


def test_stale_lock_is_reported_then_broken_with_break_lock(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / LOCK_NAME).write_text(json.dumps({"run_id": "deadbeef", "host": "gone-host", "pid": 4242,
                                              "heartbeat_unix": time.time() - 7200}))
    cfg = job(tmp_path, images(tmp_path / "a", 2), out)
    res = cli("run", cfg, "--progress", "0")
    assert res.exit_code == EXIT_USAGE
    flat = " ".join(res.stderr.split())
    assert "run deadbeef" in flat and "looks stale" in flat and "--break-lock" in flat, flat
    assert str(out / LOCK_NAME) in flat
    assert not (out / "shards").exists()                     # nothing was started
    res = cli("run", cfg, "--progress", "0", "--break-lock")
    assert res.exit_code == EXIT_OK, res.output
    assert not (out / LOCK_NAME).exists()


def test_lock_is_removed_when_the_run_fails(tmp_path, monkeypatch):
    out = tmp_path / "out"

    def boom(*_a, **_k):
        raise RuntimeError("stage exploded")

    monkeypatch.setattr("polycap.pipelines.run.build_pipeline", boom)
    res = cli("run", job(tmp_path, images(tmp_path / "a", 1), out), "--progress", "0.1")
    assert res.exit_code == 1 and "stage exploded" in res.stderr
    assert not (out / LOCK_NAME).exists() and not (out / "_progress").exists()


# ---------------------------------------------------------------- output vs inputs

def test_output_inside_the_input_is_a_config_error(tmp_path):
    src = images(tmp_path / "photos", 2)
    res = cli("run", job(tmp_path, src, src / "out"))
    assert res.exit_code == EXIT_USAGE
    assert "lies inside the input sources[0].path" in " ".join(res.stderr.split())
    assert not (src / "out").exists()


def test_input_inside_the_output_is_a_config_error(tmp_path):
    out = tmp_path / "out"
    src = images(out / "raw", 2)
    res = cli("run", job(tmp_path, src, out))
    assert res.exit_code == EXIT_USAGE
    assert "lies inside the output" in " ".join(res.stderr.split())
    glob_src = f"{tmp_path}/**/*.png"                  # a recursive glob above the output reaches into it
    res = cli("run", job(tmp_path, glob_src, tmp_path / "elsewhere"))
    assert res.exit_code == EXIT_USAGE and "lies inside the input" in " ".join(res.stderr.split())


def test_output_beside_a_flat_glob_is_allowed(tmp_path):
    from polycap.pipelines.run import check_output_apart
    from polycap.schemas.config import load_config

    images(tmp_path / "in", 1)
    cfg = load_config(job(tmp_path, f"{tmp_path}/in/*.png", tmp_path / "in" / "out"))
    check_output_apart(cfg, str(tmp_path / "in" / "out"))     # `in/*.png` never matches `in/out/...`
    cfg = load_config(job(tmp_path, f"{tmp_path}/in/*/*.jpg", tmp_path / "in" / "out"))
    with pytest.raises(Exception, match="lies inside the input"):     # `in/*/*.jpg` matches `in/out/x.jpg`
        check_output_apart(cfg, str(tmp_path / "in" / "out"))


# ---------------------------------------------------------------- per-split rejects and stats, progress, summary

def test_train_then_val_keep_both_splits_rejects_and_stats(tmp_path):
    from polycap.pipelines.report import collect
    from polycap.sharding.run_stats import read_stats

    out = tmp_path / "out"
    assert cli("run", job(tmp_path, images(tmp_path / "a", 3, bad=2), out), "--progress", "0").exit_code == 0
    train = stats(out, "train")
    res = cli("run", job(tmp_path, images(tmp_path / "b", 2, seed=9), out, split="val", name="v.yaml"),
              "--progress", "0")
    assert res.exit_code == 0, res.output
    assert stats(out, "train") == train                          # untouched by the val run
    val = stats(out, "val")
    assert (train["kept"], train["rejected"], val["kept"], val["rejected"]) == (3, 2, 2, 1)
    assert val["split"] == "val" and train["split"] == "train"
    assert read_rejects(str(out), "train").num_rows == 2 and read_rejects(str(out), "val").num_rows == 1
    assert read_rejects(str(out)).num_rows == 3
    merged = read_stats(str(out))
    assert (merged["inputs"], merged["kept"], merged["rejected"], merged["balanced"]) == (8, 5, 3, True)
    rep = validate_dir(str(out))
    assert rep.ok and rep.samples == 5, rep.errors
    data = collect(str(out))
    assert (data.kept, data.rejected, data.stats["inputs"]) == (5, 3, 8)
    res = cli("shards", "stats", str(out))
    assert res.exit_code == 0 and json.loads(res.stdout)


def test_progress_lines_end_at_the_final_totals_and_summary_lists_every_output(tmp_path):
    out = tmp_path / "out"
    (out / "_cache" / "caption").mkdir(parents=True)
    (out / "_cache" / "caption" / "ab.json").write_text("x" * 1234)    # as a captioning run leaves it
    res = cli("run", job(tmp_path, images(tmp_path / "a", 5, bad=2), out), "--progress", "0.2")
    assert res.exit_code == 0, res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("[polycap] progress ")]
    assert lines and "\r" not in res.stderr                # not a terminal: plain lines, no rewriting
    pat = re.compile(r"inputs (\d+)(?:/(\d+))? \([\d.]+/s\), kept (\d+), rejected (\d+)")
    got = [pat.search(ln) for ln in lines]
    assert all(got), lines
    seen = [tuple(int(x) for x in (m[1], m[3], m[4])) for m in got]
    assert all(a[k] <= b[k] for a, b in zip(seen, seen[1:]) for k in range(3)), seen   # counts only grow
    st = stats(out, "train")
    assert seen[-1] == (st["inputs"], st["kept"], st["rejected"]) == (7, 5, 2)
    assert {m[2] for m in got} == {"7"}                    # a local folder: the total is known, so an ETA
    assert not (out / "_progress").exists() and not (out / LOCK_NAME).exists()
    summary = res.stdout
    for part in ("shards/train-*.tar: 1 shards", "manifest.parquet", "rejects/train/: 1 parquet files",
                 "_stats/train.json", "_run.json", "_cache/: 1 files, 1.2 KB"):
        assert part in summary, summary
