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

from polycap.pipelines.run import run
from polycap.schemas.config import load_config
from polycap.sharding.reader import iter_samples, list_shards
from polycap.sharding.validate import check_tar, validate_dir

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


def _stats(out: Path, split: str = "train") -> dict:
    return json.loads((out / "_stats" / f"{split}.json").read_text())


def _rejects(out: Path) -> list[dict]:
    from polycap.sharding.rejects import read_rejects
    return read_rejects(str(out)).to_pylist()


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory, eval_dir):
    from polycap.pipelines.demo import build_sample

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
    assert not (out / "_staging").exists()      # staged image bytes are removed once shards are committed


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
    # every sample carries the run's members (shard layout 2.0): a caption-less sample's en.txt is empty
    assert all(s.texts.get("en", "") == "" for s in samples if not s.json["source"]["orig_caption"])


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
    res = subprocess.run([sys.executable, "-m", "polycap.pipelines.cli", "run", str(cfg)], capture_output=True,
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
    proc = subprocess.Popen([sys.executable, "-m", "polycap.pipelines.cli", "run", str(cfg)], cwd=REPO,
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
    # Whatever a reader would open (committed `*.tar` names) is a whole, well-formed tar: the writer's
    # temps (`.….tar.tmp-…`) are never listed, so no sample can come out of a half-written file.
    committed = list_shards(str(out))
    for path in committed:
        assert check_tar(path)[1] == [], path
    assert all(".tmp-" not in os.path.basename(p) for p in committed)
    read = [s.key for s in iter_samples(str(out))]          # raises ShardError on a truncated tar
    if (out / "manifest.parquet").exists():
        # a committed manifest describes exactly what a reader yields, and the validator agrees
        assert sorted(read) == sorted(pq.read_table(out / "manifest.parquet").column("key").to_pylist())
        assert report.ok, report.errors
    else:
        # killed before the commit step: no manifest, so nothing is trusted and the validator says so
        assert not report.ok and any("manifest" in e for e in report.errors), report.errors


def _counts(inputs: int, kept: list[tuple[str, str, list[str]]], n_rejects: int) -> dict[str, int]:
    """What the pipeline's counters merge into (sharding/run_stats.py): inputs counted at ingest, kept as
    the shard commit reports it, reject rows by stage and reason, caption languages of kept samples."""
    counts = {"inputs": inputs, "kept": len(kept), "rejected": n_rejects,
              "stage:decode": n_rejects, "reason:corrupt_image": n_rejects}
    for _, _, langs in kept:
        for lang in langs:
            counts[f"lang:{lang}"] = counts.get(f"lang:{lang}", 0) + 1
    return counts


def test_stats_balance_compares_independent_counts():
    """`balanced` compares the ingest-time input count with kept (from the shard commit) + rejected (reject
    rows), counted in the pipeline, so a lost record (or a double-counted one) shows up as a mismatch."""
    from polycap.pipelines.run import stats_from_counts, summary_lines

    kept = [("a", "train", ["en"]), ("b", "train", ["en", "ko"]), ("c", "train", [])]
    st = stats_from_counts(_counts(5, kept, 2), time.time())
    assert (st["inputs"], st["kept"], st["rejected"], st["balanced"]) == (5, 3, 2, True)
    assert st["kept_by_language"] == {"en": 2, "ko": 1}
    assert st["rejected_by_stage"] == {"decode": 2} and st["rejected_by_reason"] == {"corrupt_image": 2}
    assert "MISMATCH" not in summary_lines(st, "x")[0]
    for inputs in (6, 4):                                    # one record lost / one counted twice
        st = stats_from_counts(_counts(inputs, kept, 2), time.time())
        assert st["balanced"] is False
        assert "MISMATCH" in summary_lines(st, "x")[0]


def test_stats_count_only_the_split_this_run_wrote(tmp_path, eval_dir):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("coffee.png", "rocket.jpg"):
        shutil.copyfile(eval_dir / "photos" / "skimage" / name, src / name)
    out = tmp_path / "out"
    run(load_config(data={"sources": [{"kind": "dir", "path": str(src)}], "output": str(out),
                          "shards": {"split": "val"}}))
    stats = run(load_config(data={"sources": [{"kind": "dir", "path": str(src)}], "output": str(out),
                                  "shards": {"split": "train"}}))
    splits = pq.read_table(out / "manifest.parquet").column("split").to_pylist()
    assert sorted(splits) == ["train", "train", "val", "val"]          # the writer keeps the other split
    assert (stats["inputs"], stats["kept"], stats["rejected"]) == (2, 2, 0) and stats["balanced"], stats
