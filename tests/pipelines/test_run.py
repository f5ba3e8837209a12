"""End to end: `polycap run` over real photos and bad inputs; nothing lost, reruns identical, kill-safe."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipelines.config import load_config
from pipelines.run import run
from sharding.reader import iter_samples
from sharding.validate import validate_dir

REPO = Path(__file__).resolve().parents[2]


def _cfg(src: Path, out: Path, **sections):
    data = {"sources": [{"kind": "dir", "path": str(src), "name": "t"}], "output": str(out),
            "shards": {"split": "train", "max_samples": 5}}
    data.update(sections)
    return load_config(data=data)


def _bomb_png(w: int = 30000, h: int = 30000) -> bytes:
    """A tiny file whose header claims 900 MP: a decompression bomb."""
    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)
    raw = zlib.compress(b"\x00" * (w // 8 + 1) * 64)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", raw) + chunk(b"IEND", b""))


def _stats(out: Path) -> dict:
    return json.loads((out / "_stats.json").read_text())


def _rejects(out: Path) -> list[dict]:
    from sharding.rejects import read_rejects
    return read_rejects(str(out)).to_pylist()


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory, eval_dir):
    from pipelines.demo import build_sample

    d = build_sample(tmp_path_factory.mktemp("demo") / "input")
    (d / "bomb.png").write_bytes(_bomb_png())
    return d


@pytest.mark.slow
def test_real_photos_and_edge_formats_balance(tmp_path, eval_dir):
    src = tmp_path / "photos"
    shutil.copytree(eval_dir / "photos", src, ignore=shutil.ignore_patterns("*.md", "*.txt"))
    n_files = sum(1 for p in src.rglob("*") if p.is_file())
    out = tmp_path / "out"
    stats = run(_cfg(src, out))
    assert stats["inputs"] == n_files
    assert stats["balanced"] and stats["inputs"] == stats["kept"] + stats["rejected"]
    assert stats["kept"] >= 25
    # every edge format is either in the manifest or rejected with a reason
    manifest = pq.read_table(out / "manifest.parquet").to_pylist()
    kept_uris = {os.path.basename(r["source_uri"]) for r in manifest}
    rejected = {os.path.basename(r["source_uri"]): r for r in _rejects(out)}
    for f in (eval_dir / "photos" / "edge_formats").iterdir():
        assert f.name in kept_uris or f.name in rejected, f.name
        if f.name in rejected:
            assert rejected[f.name]["reason"] and rejected[f.name]["detail"]
    assert validate_dir(str(out)).ok


@pytest.mark.slow
def test_bad_inputs_get_distinct_reasons(tmp_path, bad_inputs):
    out = tmp_path / "out"
    stats = run(_cfg(bad_inputs, out))
    assert stats["balanced"]
    by_file = {os.path.basename(r["source_uri"]): r["reason"] for r in _rejects(out)}
    expected = {"broken.jpg": "corrupt_image", "empty.jpg": "empty_file", "readme.html": "not_an_image",
                "bomb.png": "decompression_bomb", "tiny.png": "too_small", "banner.png": "extreme_aspect"}
    for name, reason in expected.items():
        assert by_file.get(name) == reason, (name, by_file.get(name))
    assert len(set(expected.values())) == len(expected)
    # exact and near duplicates are rejected, naming the kept key
    dups = [r for r in _rejects(out) if r["reason"] == "duplicate"]
    assert {os.path.basename(r["source_uri"]) for r in dups} >= {"chelsea_small.jpg"}
    assert len(dups) == 2 and all(len(r["detail"]) > 0 for r in dups)
    # alt-text carried forward as the English text when no captioner ran; never invented
    samples = list(iter_samples(str(out)))
    with_txt = [s for s in samples if s.json["source"]["orig_caption"]]
    assert with_txt and all(s.texts.get("en") == s.json["source"]["orig_caption"].strip() for s in with_txt)
    assert all("en" not in s.texts for s in samples if not s.json["source"]["orig_caption"])


def _shard_digests(out: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((out / "shards").glob("*.tar"))}


@pytest.mark.slow
def test_rerun_same_output_same_shards_and_multiprocessing(tmp_path, bad_inputs):
    out = tmp_path / "out"
    run(_cfg(bad_inputs, out))
    first = _shard_digests(out)
    assert first
    run(_cfg(bad_inputs, out))
    assert _shard_digests(out) == first
    out2 = tmp_path / "out_mp"
    stats = run(_cfg(bad_inputs, out2), ["--direct_running_mode=multi_processing", "--direct_num_workers=2"])
    assert stats["balanced"]
    assert _shard_digests(out2) == first


def test_cli_bad_config_names_field(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("sources: [{kind: dir, path: /nonexistent}]\nfilter: {min_side: -3}\n")
    res = subprocess.run([sys.executable, "-m", "pipelines.cli", "run", str(cfg)], capture_output=True,
                         text=True, cwd=REPO)
    assert res.returncode == 2
    assert "filter.min_side" in res.stderr


@pytest.mark.slow
def test_sigkill_midway_leaves_nothing_a_reader_would_trust(tmp_path, eval_dir):
    src = tmp_path / "src"
    src.mkdir()
    photos = [p for p in (eval_dir / "photos").rglob("*") if p.suffix.lower() in (".jpg", ".png")]
    for i in range(6):  # enough work to be killed midway
        for p in photos:
            (src / f"{i}_{p.name}").write_bytes(p.read_bytes() + bytes([i]) * (i + 1))
    out = tmp_path / "out"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(json.dumps({"sources": [{"kind": "dir", "path": str(src)}], "output": str(out),
                               "dedup": {"near": False}, "shards": {"max_samples": 4}}))
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "run", str(cfg)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 180
    shards = out / "shards"
    # kill as soon as the writer has started putting files down (temp or final), i.e. mid-write
    while time.time() < deadline and proc.poll() is None:
        if shards.exists() and any(shards.iterdir()):
            break
        time.sleep(0.01)
    was_running = proc.poll() is None
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert was_running, "the run finished before it could be killed; make the input larger"
    report = validate_dir(str(out))
    # Either everything that is there is complete and consistent, or the validator flags it; a reader
    # never yields a sample out of a half-written tar.
    if report.ok:
        assert sum(1 for _ in iter_samples(str(out))) == len(pq.read_table(out / "manifest.parquet"))
    else:
        assert report.errors
