"""The job and every command on an object store: sources and output on a real S3-protocol server (moto's,
on 127.0.0.1), the options passed after `--` exactly as a user would, multi-process DirectRunner workers,
and a launcher that writes nothing to its own disk."""
from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
import uuid
from pathlib import Path

import pytest

from polycap.sharding import fs

REPO = Path(__file__).resolve().parents[2]
PHOTOS = ("astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "camera.png", "coins.png")
MP = ["--direct_num_workers=2", "--direct_running_mode=multi_processing"]


def _env() -> dict[str, str]:
    """No AWS settings from the environment: the Beam options after `--` must be enough."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["AWS_CONFIG_FILE"] = env["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull
    return env


def _polycap(args: list[str], cwd: Path, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "polycap", *args], cwd=cwd, env=_env(), capture_output=True,
                          text=True, timeout=600, **kw)


def _config(path: Path, src: str, out: str, max_samples: int = 3, **sections) -> Path:
    data = {"sources": [{"kind": "dir", "path": src, "name": "s3photos"}], "output": out,
            "dedup": {"near": False}, "shards": {"split": "train", "max_samples": max_samples}, **sections}
    path.write_text(json.dumps(data))
    return path


def _upload_sources(s3, bucket: str, eval_dir: Path, copies: int = 1) -> int:
    """The photos (plus a corrupt file and a text file, which must end as rejects) under `src/`."""
    n = 0
    for i in range(copies):
        for name in PHOTOS:
            data = (eval_dir / "photos" / "skimage" / name).read_bytes()
            stem = f"src/{i}_{name.rsplit('.', 1)[0]}"
            s3.put(bucket, f"{stem}.{name.rsplit('.', 1)[1]}", data + bytes([i]) * i)   # distinct keys per copy
            s3.put(bucket, f"{stem}.txt", f"A test photograph called {name}.\n".encode())  # sidecar caption
            n += 1
    s3.put(bucket, "src/broken.jpg", b"\xff\xd8\xff\xe0 this is not a jpeg")
    s3.put(bucket, "src/notes.html", b"<html>not an image</html>")
    return n + 2


def _s3_objects(s3, bucket: str, prefix: str) -> dict[str, int]:
    return {k[len(prefix):]: v for k, v in s3.keys(bucket, prefix).items()}


def _leftovers(objects: dict[str, int]) -> list[str]:
    """Staging, progress, lock, temp and sidecar objects: none may survive a finished run."""
    return [k for k in objects if k.startswith(("_staging/", "_progress/", "_lock.json")) or ".tmp-" in k
            or "/." in k or k.startswith(".")]


def _shard_members(s3, bucket: str, key: str) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(s3.get(bucket, key))) as tf:
        return {m.name: tf.extractfile(m).read() for m in tf.getmembers()}


@pytest.fixture(scope="module")
def s3_run(_s3_server_process, eval_dir, tmp_path_factory):
    """One `polycap run` from s3://.../src to s3://.../out, launched from an empty scratch folder."""
    s3 = _s3_server_process
    bucket = f"run-{uuid.uuid4().hex[:8]}"
    s3.bucket(bucket)
    n_inputs = _upload_sources(s3, bucket, eval_dir)
    scratch = tmp_path_factory.mktemp("s3run")
    cwd = scratch / "cwd"
    cwd.mkdir()
    cfg = _config(scratch / "job.json", f"s3://{bucket}/src", f"s3://{bucket}/out")
    res = _polycap(["run", str(cfg), "--progress", "0.3", "--", *s3.args, *MP], cwd)
    assert res.returncode == 0, res.stderr[-3000:]
    return {"s3": s3, "bucket": bucket, "inputs": n_inputs, "cwd": cwd, "cfg": cfg, "stdout": res.stdout,
            "stderr": res.stderr, "scratch": scratch}


@pytest.mark.slow
def test_run_on_s3_leaves_balanced_stats_and_agreeing_outputs(s3_run, s3_server):
    s3, bucket = s3_run["s3"], s3_run["bucket"]
    assert os.listdir(s3_run["cwd"]) == []                          # nothing on the launcher's disk
    assert not any(p.name.startswith("s3:") for p in s3_run["scratch"].iterdir())
    objects = _s3_objects(s3, bucket, "out/")
    stats = json.loads(s3.get(bucket, "out/_stats/train.json"))
    assert stats["inputs"] == s3_run["inputs"] and stats["balanced"]
    assert stats["rejected"] >= 2 and stats["kept"] == len(PHOTOS)
    assert f"inputs {stats['inputs']} = kept {stats['kept']} + rejected {stats['rejected']}" in s3_run["stdout"]
    n_rejects = len([k for k in objects if k.startswith("rejects/train/rejects-")])
    assert f"  rejects/train/: {n_rejects} parquet files" in s3_run["stdout"]    # the summary lists them
    # progress from worker processes through S3 (multi-processing): the last line has the final counts
    progress = [ln for ln in s3_run["stderr"].splitlines() if ln.startswith("[polycap] progress ")]
    assert progress and progress[-1].endswith(
        f"inputs {stats['inputs']} ({progress[-1].split('(')[1].split(')')[0]}), kept {stats['kept']}, "
        f"rejected {stats['rejected']}"), progress[-3:]
    assert "rejects/train/rejects-00000.parquet" in objects and "_stats/train.json" in objects
    assert json.loads(s3.get(bucket, "out/_run.json"))["run_id"]
    # manifest, shards and rejects on S3 agree with each other and with the stats
    out = f"s3://{bucket}/out"
    manifest = fs.read_parquet(fs.join(out, "manifest.parquet"))
    assert manifest.num_rows == stats["kept"]
    shards = sorted(k for k in objects if k.startswith("shards/"))
    assert shards == sorted({f"shards/{s}" for s in manifest.column("shard").to_pylist()})
    from polycap.sharding.rejects import read_rejects
    from polycap.sharding.validate import validate_dir

    rejects = read_rejects(out)
    assert rejects.num_rows == stats["rejected"]
    assert {os.path.basename(u) for u in rejects.column("source_uri").to_pylist()} >= {"broken.jpg", "notes.html"}
    report = validate_dir(out)
    assert report.ok and report.samples == stats["kept"], report.errors
    assert _leftovers(objects) == []


@pytest.mark.slow
def test_rerun_with_other_decode_settings_writes_the_new_bytes(s3_run, s3_server):
    """The same inputs staged again under other decode settings: every jpg member is the new encoding (its
    size matches its json), and a stale shard beyond the new set is removed."""
    from PIL import Image

    s3, bucket = s3_run["s3"], s3_run["bucket"]
    s3.put(bucket, "out/shards/train-000099.tar", b"stale shard of an earlier run")
    res = _polycap(["run", str(s3_run["cfg"]), "--set", "decode.max_side=256", "--", *s3.args, *MP],
                   s3_run["cwd"])
    assert res.returncode == 0, res.stderr[-3000:]
    assert os.listdir(s3_run["cwd"]) == []
    objects = _s3_objects(s3, bucket, "out/")
    manifest = fs.read_parquet(f"s3://{bucket}/out/manifest.parquet")
    listed = sorted(k for k in objects if k.startswith("shards/"))
    assert listed == sorted({f"shards/{s}" for s in manifest.column("shard").to_pylist()})
    seen = 0
    for key in listed:
        members = _shard_members(s3, bucket, f"out/{key}")
        for name, data in members.items():
            if name.endswith(".jpg"):
                rec = json.loads(members[name[:-4] + ".json"])
                with Image.open(io.BytesIO(data)) as im:
                    assert im.size == (rec["image"]["width"], rec["image"]["height"]), name
                    assert max(im.size) <= 256, name
                seen += 1
    assert seen == manifest.num_rows == len(PHOTOS)
    assert _leftovers(objects) == []


@pytest.mark.slow
def test_shard_commands_and_translate_on_s3(s3_run, s3_server, tmp_path):
    s3, bucket = s3_run["s3"], s3_run["bucket"]
    out = f"s3://{bucket}/out"
    cwd = s3_run["cwd"]
    res = _polycap(["shards", "validate", out, "--", *s3.args], cwd)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    report = json.loads(res.stdout)
    assert report["ok"] and report["samples"] == len(PHOTOS) and not report["warnings"]
    # a shard that the manifest does not name is found (listing works by prefix)
    s3.put(bucket, "out/shards/train-000077.tar", s3.get(bucket, "out/shards/train-000000.tar"))
    res = _polycap(["shards", "validate", out, "--", *s3.args], cwd)
    assert res.returncode == 1 and "train-000077.tar: not in the manifest" in res.stdout
    s3.client().delete_object(Bucket=bucket, Key="out/shards/train-000077.tar")
    res = _polycap(["shards", "stats", out, "--", *s3.args], cwd)
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads(res.stdout)["samples"] == len(PHOTOS)
    res = _polycap(["shards", "preview", out, "-n", "2", "--", *s3.args], cwd)
    assert res.returncode == 0 and len(json.loads(res.stdout)) == 2, res.stderr[-2000:]
    res = _polycap(["shards", "export", out, "--format", "llava", "--out", f"s3://{bucket}/export/llava.json",
                    "--", *s3.args], cwd)
    assert res.returncode == 0, res.stderr[-2000:]
    summary = json.loads(res.stdout)
    exported = _s3_objects(s3, bucket, "export/")
    assert summary["samples"] == summary["images_written"] == len(PHOTOS) and summary["records"] == len(PHOTOS)
    assert "llava.json" in exported and len([k for k in exported if k.startswith("images/")]) == len(PHOTOS)
    assert len(json.loads(s3.get(bucket, "export/llava.json"))) == summary["records"]
    assert os.listdir(cwd) == []
    # translate: input and output on S3, the same options (in-process, so the test backend is registered)
    from polycap.pipelines.translate import run as run_translate
    from polycap.schemas.config import TranslateConfig
    from tests.fakes.fake_translator import FAKE

    s3.put(bucket, "text/caps.jsonl", b'{"caption": "A red cup on a table."}\n{"caption": "Two dogs."}\n{"x": 1}\n')
    os.chdir(cwd)
    try:
        stats = run_translate(f"s3://{bucket}/text/caps.jsonl", ["ko"], f"s3://{bucket}/tr",
                              TranslateConfig(backend=FAKE, model="fake"), pipeline_args=list(s3.args))
    finally:
        os.chdir(REPO)
    assert stats["balanced"] and stats["inputs"] == 3 and stats["langs"]["ko"]["kept"] == 2
    objects = _s3_objects(s3, bucket, "tr/")
    assert json.loads(s3.get(bucket, "tr/_stats.json"))["langs"] == stats["langs"]
    lines = s3.get(bucket, "tr/ko/caps.jsonl").decode().splitlines()
    assert len(lines) == 2 and all(json.loads(line)["caption"] != "Two dogs." for line in lines)
    assert [k for k in objects if "_parts/" in k or ".tmp" in k or k.startswith("_progress/")] == []
    assert any(k.startswith("rejects/caps.jsonl/") for k in objects)
    assert os.listdir(cwd) == []


def _manifest_rows(out: str) -> list[dict]:
    rows = fs.read_parquet(fs.join(out, "manifest.parquet")).to_pylist()
    return sorted(rows, key=lambda r: r["key"])


@pytest.mark.slow
def test_sigkill_during_the_s3_commit_then_rerun_converges(s3_server, eval_dir, tmp_path):
    """Killed while the commit renames shards into place on S3, the rerun ends with the manifest and shards a
    clean run writes, and nothing else under the output."""
    s3 = s3_server
    bucket = f"kill-{uuid.uuid4().hex[:8]}"
    s3.bucket(bucket)
    _upload_sources(s3, bucket, eval_dir, copies=3)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    cfg = _config(tmp_path / "job.json", f"s3://{bucket}/src", f"s3://{bucket}/out", max_samples=1)
    proc = subprocess.Popen([sys.executable, "-m", "polycap", "run", str(cfg), "--", *s3.args], cwd=cwd,
                            env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline, killed_mid_commit = time.time() + 300, False
    while time.time() < deadline and proc.poll() is None:
        names = s3.keys(bucket, "out/shards/")
        if any(k.rsplit("/", 1)[1].startswith("train-") for k in names):   # a final name: the commit is on
            killed_mid_commit = True
            break
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert killed_mid_commit, "the run ended before its commit could be interrupted"
    res = _polycap(["run", str(cfg), "--", *s3.args], cwd)                 # the killed run's lock is still there
    assert res.returncode == 2 and "no longer running" in res.stderr and "--break-lock" in res.stderr, res.stderr
    res = _polycap(["run", str(cfg), "--break-lock", "--", *s3.args], cwd)  # the rerun
    assert res.returncode == 0, res.stderr[-3000:]
    clean = _config(tmp_path / "clean.json", f"s3://{bucket}/src", f"s3://{bucket}/clean", max_samples=1)
    res = _polycap(["run", str(clean), "--", *s3.args], cwd)
    assert res.returncode == 0, res.stderr[-3000:]
    assert _manifest_rows(f"s3://{bucket}/out") == _manifest_rows(f"s3://{bucket}/clean")
    after, want = _s3_objects(s3, bucket, "out/"), _s3_objects(s3, bucket, "clean/")
    shards = {k: v for k, v in want.items() if k.startswith("shards/")}
    assert {k: v for k, v in after.items() if k.startswith("shards/")} == shards and len(shards) > 1
    for k in shards:
        assert s3.get(bucket, f"out/{k}") == s3.get(bucket, f"clean/{k}")
    assert _leftovers(after) == [] and set(after) == set(want)
    assert os.listdir(cwd) == []
