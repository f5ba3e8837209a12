"""A run in waves (pipelines/waves.py) against one graph over the same inputs: the same kept keys and rejects
when every earlier copy is the better one, valid shards, every input accounted for; plus the pure parts
(near-dup search over earlier waves, the listing, merged stats)."""
from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from polycap.pipelines.waves import line_row, listing_lines, read_slice, row_line, write_listing
from polycap.schemas import Reason, Reject
from polycap.schemas.config import Config, IngestConfig, RunConfig, SourceConfig
from polycap.sharding.record_json import record_from_json
from polycap.sharding.rejects import read_rejects
from polycap.sharding.validate import validate_dir
from polycap.sharding.wave_commit import merge_stats
from polycap.transforms.cross_wave import EarlierHashes
from polycap.transforms.download import ingest_reject, list_rows, new_sample
from tests.transforms.image_server import ImageServer
from tests.transforms.test_cross_wave import index_of

REPO = Path(__file__).resolve().parents[2]


def _jpeg(im: Image.Image, quality: int = 92) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _photos(eval_dir: Path, n: int) -> list[Image.Image]:
    out = []
    for p in sorted(p for p in (eval_dir / "photos").rglob("*") if p.suffix.lower() in (".jpg", ".png")
                    and "edge_formats" not in p.parts and p.stat().st_size < 3_000_000):
        im = Image.open(p).convert("RGB")
        if min(im.size) >= 200 and max(im.size) <= 3 * min(im.size):
            im.thumbnail((400, 400))
            out.append(im)
        if len(out) == n:
            return out
    raise RuntimeError("not enough eval photos")


def make_waves_input(dest: Path, eval_dir: Path) -> Path:
    """12 inputs read in name order, 3 waves of 4: a.. wave 0, b.. wave 1, c.. wave 2. Cross-wave exact
    copies (b00 of a00, c00 of b02), cross-wave near copies (b01 of a01, c01 of a02: 90 % size, q80), an
    in-wave exact copy (c03 of c02), an unreadable file; the earlier copy is always the better one."""
    ph = _photos(eval_dir, 6)

    def smaller(im: Image.Image) -> bytes:
        return _jpeg(im.resize((int(im.width * 0.9), int(im.height * 0.9))), 80)

    files = {"a00.jpg": _jpeg(ph[0]), "a01.jpg": _jpeg(ph[1]), "a02.jpg": _jpeg(ph[2]), "a03.jpg": _jpeg(ph[3]),
             "b00.jpg": _jpeg(ph[0]), "b01.jpg": smaller(ph[1]), "b02.jpg": _jpeg(ph[4]), "b03.jpg": b"not a jpeg",
             "c00.jpg": _jpeg(ph[4]), "c01.jpg": smaller(ph[2]), "c02.jpg": _jpeg(ph[5]), "c03.jpg": _jpeg(ph[5])}
    dest.mkdir(parents=True)
    for name, data in files.items():
        (dest / name).write_bytes(data)
    (dest / "a00.txt").write_text("a caption sidecar, read with a00.jpg in the same wave")
    return dest


def _run(tmp: Path, src: Path, out: Path, *args: str, kind: str = "dir", **extra: dict) -> subprocess.CompletedProcess:
    cfg = tmp / f"job-{out.name}.json"
    cfg.write_text(json.dumps({"sources": [{"kind": kind, "path": str(src), "name": "w"}], "output": str(out),
                               "dedup": {"near": True}, "shards": {"max_samples": 3}, **extra}))
    return subprocess.run([sys.executable, "-m", "polycap.pipelines.cli", "run", str(cfg), "--progress", "0",
                           *args], cwd=REPO, capture_output=True, text=True, timeout=600)


def _outcome(out: Path) -> dict:
    kept = sorted(pq.read_table(out / "manifest.parquet").column("key").to_pylist())
    rejects = sorted((Path(r["source_uri"]).name, r["stage"], r["reason"], r["detail"].split(" (")[0])
                     for r in read_rejects(str(out), "train").to_pylist())
    return {"kept": kept, "rejects": rejects}


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_waves_equal_one_graph_when_earlier_copies_are_better(tmp_path, eval_dir):
    src = make_waves_input(tmp_path / "in", eval_dir)
    res_w = _run(tmp_path, src, tmp_path / "waves", "--wave-size", "4")
    assert res_w.returncode == 0, res_w.stderr[-3000:]
    res_1 = _run(tmp_path, src, tmp_path / "one", "--wave-size", "0")
    assert res_1.returncode == 0, res_1.stderr[-3000:]
    waves, one = _outcome(tmp_path / "waves"), _outcome(tmp_path / "one")
    assert waves == one
    # what a crashed run in waves leaves behind does not outlive a run in one graph into the same output
    leftover = tmp_path / "one" / "_waves" / "train"
    leftover.mkdir(parents=True)
    (leftover / "inputs.jsonl").write_text('{"s": 0, "p": ["x.jpg"]}\n')
    res_again = _run(tmp_path, src, tmp_path / "one", "--wave-size", "0")
    assert res_again.returncode == 0, res_again.stderr[-3000:]
    assert "left by an unfinished run in waves" in res_again.stderr
    assert not (tmp_path / "one" / "_waves").exists() and _outcome(tmp_path / "one") == one
    res_fits = _run(tmp_path, src, tmp_path / "one", "--wave-size", "100")   # all inputs fit in one wave
    assert res_fits.returncode == 0, res_fits.stderr[-3000:]
    assert not (tmp_path / "one" / "_waves").exists() and _outcome(tmp_path / "one") == one
    by_name = {name: (reason, detail) for name, _, reason, detail in waves["rejects"]}
    assert by_name["b00.jpg"][1].startswith("exact duplicate") and by_name["c00.jpg"][1].startswith("exact")
    assert by_name["b01.jpg"][1].startswith("near duplicate") and by_name["c01.jpg"][1].startswith("near")
    assert by_name["c03.jpg"][1].startswith("exact duplicate") and by_name["b03.jpg"][0] == "not_an_image"
    stats = json.loads((tmp_path / "waves" / "_stats" / "train.json").read_text())
    assert stats["waves"] == 3 and stats["balanced"] and stats["inputs"] == 12
    assert stats["kept"] + stats["rejected"] == 12 == len(waves["kept"]) + len(waves["rejects"])
    assert stats["shards"] == len(list((tmp_path / "waves" / "shards").glob("train-*.tar")))
    assert validate_dir(str(tmp_path / "waves")).ok
    assert not (tmp_path / "waves" / "_waves").exists()
    detail = {Path(r["source_uri"]).name: r["detail"] for r in read_rejects(str(tmp_path / "waves")).to_pylist()}
    assert "earlier wave" in detail["b01.jpg"] and "earlier wave" not in detail["c03.jpg"]


def make_url_list(dest: Path, photos: Path, server: ImageServer, eval_dir: Path) -> Path:
    """11 rows read in order, waves of 4 (the invalid URL is a row reject, one listing line of its own):
    a cross-wave exact copy (b00 of a00), an in-wave exact copy (c01 of c00), a 404, an invalid URL, a
    caption that is not text (a list) and one that is a number; every earlier copy has the smaller URL."""
    ph = _photos(eval_dir, 6)
    files = {"a00.jpg": _jpeg(ph[0]), "a01.jpg": _jpeg(ph[1]), "a02.jpg": _jpeg(ph[2]), "a03.jpg": _jpeg(ph[3]),
             "b00.jpg": _jpeg(ph[0]), "b02.jpg": _jpeg(ph[4]), "c00.jpg": _jpeg(ph[5]), "c01.jpg": _jpeg(ph[5])}
    photos.mkdir(parents=True)
    for name, data in files.items():
        (photos / name).write_bytes(data)
    rows = [{"url": server.url(f"photos/{n}"), "caption": f"photo {n}", "n": i} for i, n in enumerate(files)]
    rows.insert(5, {"url": server.url("photos/b01-missing.jpg"), "caption": "gone"})
    rows.insert(6, {"url": "not a url", "caption": "bad row"})
    rows[2]["caption"], rows[3]["caption"] = ["a", "list"], 42
    dest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return dest


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_url_list_waves_equal_one_graph(tmp_path, eval_dir):
    with ImageServer({"photos": tmp_path / "photos"}) as server:
        lst = make_url_list(tmp_path / "urls.jsonl", tmp_path / "photos", server, eval_dir)
        extra = {"ingest": {"allow_private_addresses": True, "retries": 0}}
        res_w = _run(tmp_path, lst, tmp_path / "waves", "--wave-size", "4", kind="urls", **extra)
        assert res_w.returncode == 0, res_w.stderr[-3000:]
        res_1 = _run(tmp_path, lst, tmp_path / "one", "--wave-size", "0", kind="urls", **extra)
        assert res_1.returncode == 0, res_1.stderr[-3000:]
    waves, one = _outcome(tmp_path / "waves"), _outcome(tmp_path / "one")
    assert waves == one
    by_name = {name: (reason, detail) for name, _, reason, detail in waves["rejects"]}
    assert by_name["b00.jpg"][1].startswith("exact duplicate") and by_name["c01.jpg"][1].startswith("exact")
    assert by_name["b01-missing.jpg"][1].startswith("HTTP 404") and by_name["not a url"][0] == "invalid_url"
    stats = json.loads((tmp_path / "waves" / "_stats" / "train.json").read_text())
    assert stats["waves"] == 3 and stats["balanced"] and stats["inputs"] == 10
    assert stats["kept"] + stats["rejected"] == 10 == len(waves["kept"]) + len(waves["rejects"])
    assert validate_dir(str(tmp_path / "waves")).ok and not (tmp_path / "waves" / "_waves").exists()

    def samples(out: Path) -> list[dict]:   # every field a sample carries, from the shards' json members
        recs = []
        for tar in sorted((out / "shards").glob("train-*.tar")):
            with tarfile.open(tar) as tf:
                recs += [record_from_json(json.load(tf.extractfile(m))) for m in tf if m.name.endswith(".json")]
        return sorted(recs, key=lambda r: r["key"])

    kept_w = samples(tmp_path / "waves")
    assert len(kept_w) == len(waves["kept"]) == 6 and kept_w == samples(tmp_path / "one")
    dropped = {r["source"]["uri"].rsplit("/", 1)[1]: r["source"]["meta"].get("caption_dropped") for r in kept_w}
    assert dropped["a02.jpg"]["detail"] == "not text: list \"['a', 'list']\"" and dropped["a03.jpg"]


def test_listed_url_rows_make_the_samples_and_rejects_the_list_makes(tmp_path):
    lst = tmp_path / "u.jsonl"
    rows = [{"url": "https://example.com/a.jpg", "caption": ["not", "text"], "x": float("nan"), "d": {"k": 1}},
            {"url": "https://u:p@example.com/b.jpg", "TEXT": "caf\u00e9 \ud800", "n": 7},
            {"url": "https://example.com/c.jpg", "caption": 4.5}, {"url": "ftp://x/y"}, {"nourl": 1}]
    lst.write_text("".join(json.dumps(r) + "\n" for r in rows) + "{broken\n")
    src = SourceConfig(kind="urls", path=str(lst), name="u")
    direct = list(list_rows(str(lst), src, IngestConfig()))
    assert sum(isinstance(x, Reject) for x in direct) == 3
    cfg = Config(sources=[src])
    path = str(tmp_path / "inputs.jsonl")
    offsets = write_listing(cfg, path, 2)
    listed = [line for a, b in zip(offsets, offsets[1:]) for line in _slice_items(path, a, b)]

    def made(x):
        if isinstance(x, Reject):
            return ingest_reject(src, x.source_uri, x.reason, x.detail)
        return new_sample(b"same bytes", src, x.url, orig_caption=x.caption, meta=x.meta)

    assert [made(x) for x in listed] == [made(x) for x in direct]
    assert line_row(json.loads(json.dumps(row_line(0, direct[0])))["u"]) != direct[0]   # the list cell is described


def _slice_items(path: str, a: int, b: int) -> list:
    """The listing's items between two offsets in file order (read_slice groups them by kind)."""
    items = []
    with open(path, "rb") as f:
        f.seek(a)
        for raw in f.read(b - a).decode().splitlines():
            line = json.loads(raw)
            items.append(line_row(line["u"]) if "u" in line else Reject(
                key="", source_uri=line["r"][0], stage="ingest", reason=Reason(line["r"][1]), detail=line["r"][2],
                source_name="u"))
    return items


def test_earlier_hashes_find_exactly_the_items_within_t(tmp_path):
    rng = np.random.default_rng(0)
    h = rng.integers(0, 2**63, 3000, dtype=np.int64).view(np.uint64) * np.uint64(2) + np.uint64(1)
    flips = [sum(1 << int(b) for b in rng.choice(64, k, replace=False)) for k in range(0, 16)]
    queries = [int(h[i]) ^ f for i, f in zip(rng.integers(0, len(h), 16), flips)]
    with index_of(tmp_path, [h]) as conn:
        rid = dict(conn.execute("SELECT key, rowid FROM kept"))
        prior = EarlierHashes(conn, t=10)
        for q in queries:
            dist = np.bitwise_count(h ^ np.uint64(q))
            want = sorted((int(d), rid[f"k{i}"]) for i, d in enumerate(dist) if d <= 10)
            assert prior.within(q) == want
    with index_of(tmp_path / "empty", []) as conn:
        assert EarlierHashes(conn, 10).within(5) == []


def test_listing_keeps_stems_together_and_cuts_waves_by_offsets(tmp_path):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    for name in ("a.jpg", "a.txt", "a.p.jpg", "b.png", ".hidden.jpg"):
        (src / name).write_bytes(b"x")
    (src / "sub" / "c.jpg").write_bytes(b"x")
    cfg = Config(sources=[SourceConfig(kind="dir", path=str(src))])
    lines = list(listing_lines(cfg))
    groups = [sorted(Path(p).name for p in line["p"]) for line in lines if "p" in line]
    assert sorted(groups) == [["a.jpg", "a.txt"], ["a.p.jpg"], ["b.png"], ["c.jpg"]]
    assert [Path(line["r"][0]).name for line in lines if "r" in line] == [".hidden.jpg"]
    path = str(tmp_path / "inputs.jsonl")
    offsets = write_listing(cfg, path, 2)
    assert len(offsets) == 4                     # 5 lines: waves of 2, 2, 1 and the end offset
    seen = []
    for a, b in zip(offsets, offsets[1:]):
        groups_w, refused_w, rows_w = read_slice(path, a, b)
        assert rows_w == {}
        seen += [p for _, ps in groups_w.get(0, []) for p in ps] + [r[0] for r in refused_w.get(0, [])]
    assert sorted(seen) == sorted(p for line in lines for p in (line.get("p") or [line["r"][0]]))


def test_listing_names_an_empty_source(tmp_path):
    (tmp_path / "empty").mkdir()
    lines = list(listing_lines(Config(sources=[SourceConfig(kind="dir", path=str(tmp_path / "empty"))])))
    assert lines == [{"s": 0, "r": [str(tmp_path / "empty"), "unreadable", "no input files match"]}]


def test_merge_stats_sums_waves():
    a = {"inputs": 4, "kept": 3, "rejected": 1, "shards": 1, "rejected_by_reason": {"duplicate": 1},
         "rejected_by_stage": {"dedup": 1}, "kept_by_language": {"en": 1}, "seconds": 1.5, "split": "train"}
    b = {"inputs": 2, "kept": 0, "rejected": 2, "shards": 0, "rejected_by_reason": {"duplicate": 1, "too_small": 1},
         "rejected_by_stage": {"dedup": 1, "filter": 1}, "kept_by_language": {}, "seconds": 2.0, "split": "train"}
    m = merge_stats([a, b])
    assert (m["inputs"], m["kept"], m["rejected"], m["shards"], m["balanced"]) == (6, 3, 3, 1, True)
    assert m["rejected_by_reason"] == {"duplicate": 2, "too_small": 1} and m["seconds"] == 3.5


def test_waves_apply_only_to_local_runs_of_local_folders(tmp_path):
    from polycap.pipelines.waves import applies

    cfg = Config(sources=[SourceConfig(kind="dir", path=str(tmp_path))])
    out = str(tmp_path / "out")
    assert applies(cfg, "DirectRunner", out) and applies(cfg, "PrismRunner", out)
    assert not applies(cfg, "DataflowRunner", out) and not applies(cfg, "FlinkRunner", out)
    assert not applies(cfg, "DirectRunner", "s3://bucket/out")
    assert applies(Config(sources=[SourceConfig(kind="urls", path=str(tmp_path / "u.txt")), *cfg.sources]),
                   "DirectRunner", out)
    assert not applies(Config(sources=[SourceConfig(kind="urls", path="s3://bucket/u.txt")]), "DirectRunner", out)
    assert not applies(Config(sources=[SourceConfig(kind="webdataset", path=str(tmp_path))]), "DirectRunner", out)
    assert not applies(Config(sources=cfg.sources, run=RunConfig(wave_size=0)), "DirectRunner", out)


def test_wave_size_is_checked_on_load():
    from polycap.schemas.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="run.wave_size"):
        load_config(data={"sources": [{"kind": "dir", "path": "x"}]}, overrides=["run.wave_size=-1"])


class _Unpicklable(Exception):
    def __init__(self, message: str, extra: object):
        super().__init__(message)
        self.extra = extra

    def __reduce__(self):
        raise TypeError("not picklable")


def test_in_child_runs_the_work_in_another_process_and_raises_its_error_here(tmp_path):
    import os
    import signal

    from polycap.pipelines.waves import in_child
    from polycap.transforms.backends.base import ModelUnavailableError

    marker = tmp_path / "pid"
    in_child(lambda: marker.write_text(str(os.getpid())), "the run")
    assert int(marker.read_text()) != os.getpid()

    def fails() -> None:
        raise ModelUnavailableError("caption: endpoint does not answer")

    with pytest.raises(ModelUnavailableError, match="^caption: endpoint does not answer$") as info:
        in_child(fails, "the run")
    assert "in fails" in str(info.value.__cause__)       # the child's traceback

    def odd() -> None:
        raise _Unpicklable("odd", extra=lambda: None)

    with pytest.raises(RuntimeError, match=r"^wave 3 failed \(exit status 1; .*resume from this wave"):
        in_child(odd, "wave 3")
    with pytest.raises(RuntimeError, match=r"^the run failed \(exit status 1; [^;]*\)$"):
        in_child(odd, "the run", resume_hint=False)
    with pytest.raises(RuntimeError, match=r"^wave 0 failed \(killed by signal 9\); rerun"):
        in_child(lambda: os.kill(os.getpid(), signal.SIGKILL), "wave 0")


def test_waves_fork_only_for_the_in_memory_direct_runner(tmp_path):
    """gRPC is not fork-safe: the multi_processing mode and Prism run each wave in the launcher's process (a
    forked multi_processing wave hung in a test session that had used gRPC before)."""
    import os

    from apache_beam.options.pipeline_options import PipelineOptions

    from polycap.pipelines.waves import forks, in_child

    assert forks(PipelineOptions([]))
    assert forks(PipelineOptions(["--runner=DirectRunner", "--direct_running_mode=in_memory"]))
    assert not forks(PipelineOptions(["--direct_running_mode=multi_processing", "--direct_num_workers=2"]))
    assert not forks(PipelineOptions(["--runner=PrismRunner"]))
    marker = tmp_path / "pid"
    in_child(lambda: marker.write_text(str(os.getpid())), "the run", fork=False)
    assert int(marker.read_text()) == os.getpid()
