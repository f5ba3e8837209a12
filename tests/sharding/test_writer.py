"""Shard writer: member layout, golden json, deterministic bucketing, atomic commit, reruns, runners."""
from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from polycap.schemas import (
    SCHEMA_VERSION,
    Caption,
    Hashes,
    ImageInfo,
    OcrLine,
    OcrResult,
    Sample,
    Source,
)
from polycap.sharding.reader import iter_samples, list_shards
from polycap.sharding.record_json import record_from_json
from polycap.sharding.validate import validate_dir
from polycap.sharding.writer import (
    ShardWriteError,
    bucket_of,
    json_bytes,
    num_buckets,
    sample_members,
    sample_to_json,
    sorted_unique,
)
from tests.sharding.conftest import decoded_sample, run_write

GOLDEN = Path(__file__).parent / "golden" / "sample.json"


def golden_sample() -> Sample:
    return Sample(
        key="0123456789abcdef0123456789abcdef",
        source=Source(name="eval", uri="file:///data/img/cat.jpg", kind="dir", license="CC-BY-4.0",
                      orig_caption="a cat", meta={"b": 1, "a": [1, 2]}),
        image=ImageInfo(bytes=b"\xff\xd8\xff not in json", format="jpeg", width=640, height=480,
                        orig_format="PNG", orig_width=1280, orig_height=960),
        hashes=Hashes(sha256="0123456789abcdef0123456789abcdef" * 2, phash="c3c3c3c33c3c3c3c"),
        ocr=OcrResult(engine="paddleocr 3.7.0 (onnxruntime)", models={"det": "PP-OCRv6_small_det"},
                      lines=[OcrLine(text="STOP", box=[100, 200, 300, 260], quad=[100, 200, 300, 200,
                                                                                 300, 260, 100, 260],
                                     score=0.98)],
                      lang="en", text_area_ratio=0.04),
        captions={"en": Caption(text="A cat beside a STOP sign.", kind="dense", backend="openai",
                                model="m", prompt_id="caption/general", prompt_sha256="ab" * 32),
                  "ko": Caption(text="정지 표지판 옆의 고양이.", kind="translation", backend="openai",
                                model="m", translated_from="en")},
        conversations={"en": [{"from": "human", "value": "<image>\nDescribe the image."},
                              {"from": "gpt", "value": "A cat beside a STOP sign."}]},
        provenance={"caption": {"backend": "openai", "model": "m", "version": "1"}},
    )


def test_sample_json_matches_golden_file():
    got = sample_to_json(golden_sample())
    if os.environ.get("POLYCAP_UPDATE_GOLDEN"):
        GOLDEN.write_text(json.dumps(got, ensure_ascii=False, indent=2, sort_keys=True) + "\n")
    assert got == json.loads(GOLDEN.read_text(encoding="utf-8"))
    # checked against the input, not the golden file (which POLYCAP_UPDATE_GOLDEN rewrites)
    assert "bytes" not in got["image"] and got["schema_version"] == SCHEMA_VERSION
    s = golden_sample()
    assert got["key"] == s.key and got["source"]["uri"] == s.source.uri
    assert json.loads(got["source"]["meta_json"]) == s.source.meta
    assert (got["image"]["width"], got["image"]["height"], got["image"]["orig_format"]) == (640, 480, "PNG")
    assert {k: got["hashes"][k] for k in ("sha256", "phash")} == {"sha256": s.hashes.sha256, "phash": s.hashes.phash}
    lines = json.loads(got["ocr"]["lines_json"])
    assert lines[0]["box"] == [100, 200, 300, 260] and lines[0]["text"] == "STOP"
    assert {c["lang"]: c["text"] for c in got["captions"]} == {k: c.text for k, c in s.captions.items()}
    assert [c["member"] for c in got["captions"]] == ["en.txt", "ko.txt"]
    assert got["captions"][1]["translated_from"] == "en"
    assert {c["lang"]: json.loads(c["turns_json"]) for c in got["conversations"] if c["present"]} == s.conversations
    # and back: the reader's record shape is the record minus image bytes
    back = record_from_json(got)
    assert back["conversations"] == s.conversations and back["source"]["meta"] == s.source.meta
    assert back["captions"]["ko"]["translated_from"] == "en" and back["ocr"]["lines"][0]["text"] == "STOP"
    raw = json_bytes(golden_sample())
    assert "정지 표지판".encode() in raw          # UTF-8, not \\u escapes
    assert json.loads(raw) == got


def test_members_are_jpg_json_then_sorted_languages():
    s = golden_sample()
    members = sample_members(s)
    assert [n for n, _ in members] == [f"{s.key}.jpg", f"{s.key}.json", f"{s.key}.txt", f"{s.key}.en.txt",
                                       f"{s.key}.ko.txt"]
    assert members[0][1] == s.image.bytes
    assert members[2][1] == members[3][1] == b"A cat beside a STOP sign."   # txt: the primary (en) caption
    assert members[4][1].decode("utf-8") == "정지 표지판 옆의 고양이."


@pytest.mark.parametrize("change, match", [
    ({"key": "abc.def"}, "dot-free"),
    ({"key": "../x"}, "dot-free"),
    ({"image": ImageInfo(bytes=b"")}, "no image bytes"),
    ({"captions": {"en.txt": Caption(text="x", kind="source")}}, "language"),
    ({"provenance": {"x": {"obj": object()}}}, "JSON"),
])
def test_unwritable_samples_raise_a_named_error(change, match):
    import dataclasses

    with pytest.raises(ShardWriteError, match=match):
        sample_members(dataclasses.replace(golden_sample(), **change))


def test_repeated_key_is_an_error_not_a_merge(photo_samples):
    with pytest.raises(ShardWriteError, match="twice"):
        sorted_unique([photo_samples[0], photo_samples[1], photo_samples[0]])


def test_bucketing_is_a_key_range_partition():
    assert num_buckets(0, 1000) == 1 and num_buckets(873, 1000) == 1 and num_buckets(874, 1000) == 2
    assert num_buckets(10, 1) == 10 and num_buckets(10, 2) == 10
    keys = sorted(hashlib.sha256(str(i).encode()).hexdigest()[:32] for i in range(2000))
    buckets = [bucket_of(k, 7) for k in keys]
    assert buckets == sorted(buckets) and set(buckets) == set(range(7))   # monotone in key order
    assert 0 <= bucket_of("not-hex-key", 7) < 7 and bucket_of("zz", 3) == bucket_of("zz", 3)


def _tar_names_and_meta(path: str) -> list[tuple[str, int, int, int, str, int]]:
    with tarfile.open(path) as tf:
        return [(m.name, m.mtime, m.uid, m.gid, m.uname + m.gname, m.mode) for m in tf]


def test_writes_sorted_shards_manifest_and_readable_samples(photo_samples, tmp_path):
    out = tmp_path / "run"
    infos = run_write(photo_samples, str(out), max_samples=3)
    shards = list_shards(str(out))
    assert [os.path.basename(p) for p in shards] == [i["shard"] for i in infos]
    assert all(1 <= i["samples"] <= 3 for i in infos) and sum(i["samples"] for i in infos) == 12
    for i in infos:
        data = Path(i["path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == i["sha256"] and len(data) == i["bytes"]
        meta = _tar_names_and_meta(i["path"])
        assert {m[1:] for m in meta} == {(0, 0, 0, "", 0o644)}
    by_key = {s.key: s for s in photo_samples}
    got = list(iter_samples(str(out)))
    assert [g.key for g in got] == sorted(by_key)                      # global key order across shards
    for g in got:
        s = by_key[g.key]
        assert g.jpg == s.image.bytes and g.raw == sample_to_json(s, ["en", "ko", "vi"])
        assert g.json == record_from_json(g.raw) and set(g.json["captions"]) == set(s.captions)
        # every language of the run in every sample; a language the sample lacks is an empty member
        assert g.texts == {lang: s.captions[lang].text if lang in s.captions else "" for lang in ("en", "ko", "vi")}
        assert g.txt == s.captions["en"].text
    table = pq.read_table(out / "manifest.parquet")
    assert table.column("key").to_pylist() == sorted(by_key)
    row = table.slice(0, 1).to_pylist()[0]
    s = by_key[row["key"]]
    assert (row["source_uri"], row["width"], row["height"], row["languages"]) == (
        s.source.uri, s.image.width, s.image.height, sorted(s.captions))
    assert validate_dir(str(out)).ok


def _digests(out: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (out / "shards").iterdir()}


def test_rerun_is_byte_identical_and_shrinking_rerun_removes_stale_shards(photo_samples, tmp_path):
    out = tmp_path / "run"
    run_write(photo_samples, str(out), max_samples=2)
    first = _digests(out)
    run_write(list(reversed(photo_samples)), str(out), max_samples=2)   # input order must not matter
    assert _digests(out) == first and all(not n.startswith(".") for n in first)
    run_write(photo_samples[:3], str(out), max_samples=2)
    assert len(_digests(out)) == 2
    assert sorted(s.key for s in iter_samples(str(out))) == sorted(s.key for s in photo_samples[:3])
    assert validate_dir(str(out)).ok


def test_other_split_shards_and_manifest_rows_survive(photo_samples, tmp_path):
    out = tmp_path / "run"
    run_write(photo_samples[:8], str(out), max_samples=3, split="train")
    run_write(photo_samples[8:], str(out), max_samples=3, split="val")
    names = sorted(_digests(out))
    assert any(n.startswith("train-") for n in names) and any(n.startswith("val-") for n in names)
    splits = pq.read_table(out / "manifest.parquet").column("split").to_pylist()
    assert splits.count("train") == 8 and splits.count("val") == 4
    assert validate_dir(str(out)).ok


def test_empty_input_writes_no_tar_and_an_empty_manifest(photo_samples, tmp_path):
    out = tmp_path / "run"
    assert run_write([], str(out)) == []
    assert list_shards(str(out)) == [] and pq.read_table(out / "manifest.parquet").num_rows == 0
    assert validate_dir(str(out)).ok
    run_write(photo_samples[:4], str(out))
    run_write([], str(out))                                            # an emptied rerun clears the split
    assert list_shards(str(out)) == [] and validate_dir(str(out)).ok


def test_webdataset_library_reads_the_shards(photo_samples, tmp_path):
    import webdataset as wds
    from PIL import Image

    out = tmp_path / "run"
    run_write(photo_samples, str(out), max_samples=5)
    ds = wds.WebDataset([str(p) for p in list_shards(str(out))], shardshuffle=False)
    got = list(ds)
    assert len(got) == 12
    for s in got:
        assert {"jpg", "json", "en.txt"} <= set(s)
        assert json.loads(s["json"])["key"] == s["__key__"]
        assert s["en.txt"].decode("utf-8") and Image.open(io.BytesIO(s["jpg"])).size[0] > 0
    assert all({"txt", "ko.txt", "vi.txt"} <= set(s) for s in got)        # one member set in every sample
    assert sum(bool(s["ko.txt"]) for s in got) == sum("ko" in p.captions for p in photo_samples)
    assert all(s["txt"] == s["en.txt"] for s in got)


def test_multi_processing_runner_writes_the_same_bytes(photo_samples, tmp_path):
    run_write(photo_samples, str(tmp_path / "a"), max_samples=2)
    run_write(photo_samples, str(tmp_path / "b"), max_samples=2,
              argv=["--direct_running_mode=multi_processing", "--direct_num_workers=2"])
    assert _digests(tmp_path / "a") == _digests(tmp_path / "b")
    assert validate_dir(str(tmp_path / "b")).ok


def test_decoded_sample_helper_reads_real_sizes(eval_dir):
    p = eval_dir / "photos" / "img2dataset_tests" / "123_456.jpg"
    s = decoded_sample(p.read_bytes(), str(p), "t")
    assert (s.image.width, s.image.height) == (123, 456)


def _temp_tars(samples, shards_dir: str, run_id: str, max_samples: int = 3) -> list[dict]:
    """What the write phase hands to the commit: temp tars + sidecars under `shards_dir`."""
    from polycap.sharding.writer import WriteChunksFn, bucket_of, num_buckets

    fn = WriteChunksFn(shards_dir, "train", max_samples, run_id)
    fn.setup()
    n = num_buckets(len(samples), max_samples)
    groups: dict[int, list] = {}
    for s in samples:
        groups.setdefault(bucket_of(s.key, n), []).append(s)
    return [info for b, group in sorted(groups.items()) for info in fn.process((b, group))]


def _final_state(run_dir: str) -> dict[str, str]:
    """Every file under the run dir -> sha256 (temps included, so leftovers show up)."""
    from polycap.sharding import fs

    return {name: hashlib.sha256(fs.read_bytes(fs.join(run_dir, name))).hexdigest()
            for name in sorted(fs.list_dir(run_dir, recursive=True))}


@pytest.fixture(params=["local", "s3"])
def run_root(request, tmp_path):
    if request.param == "local":
        return str(tmp_path)
    import uuid

    return request.getfixturevalue("s3_server").bucket(f"commit-{uuid.uuid4().hex[:8]}")


@pytest.mark.parametrize("crash_after", ["rename_tars_half", "rename_tars", "delete_stale", "rename_manifest",
                                         "delete_temps"])
def test_commit_retried_after_a_partial_attempt_converges(photo_samples, run_root, crash_after, monkeypatch):
    """A runner may retry the commit step: whatever the first attempt got done, the retry ends in the files
    a clean commit writes (shards, manifest, no temps), including the removal of an earlier run's shards."""
    from polycap.sharding import fs
    from polycap.sharding.writer import commit_shards

    def commit(run_dir: str, run_id: str) -> None:
        shards_dir = fs.join(run_dir, "shards")
        old = _temp_tars(photo_samples, shards_dir, "old", max_samples=1)     # an earlier run, more shards
        commit_shards(old, run_dir, shards_dir, "train", "old")
        infos = _temp_tars(photo_samples, shards_dir, run_id)
        steps = {"rename_tars": 0, "delete_stale": 0, "rename_manifest": 0, "delete_temps": 0}
        real_rename, real_delete = fs.rename_converging, fs.delete

        def rename(src, dst):
            if crash_after == "rename_tars_half" and len(src) > 1:
                real_rename(src[: len(src) // 2], dst[: len(dst) // 2])
                raise RuntimeError("killed mid-rename")
            real_rename(src, dst)
            step = "rename_manifest" if dst[-1].endswith("manifest.parquet") else "rename_tars"
            if step == crash_after:
                raise RuntimeError(f"killed after {step}")

        def delete(paths):
            real_delete(paths)
            step = "delete_temps" if steps["delete_stale"] else "delete_stale"
            steps[step] += 1
            if step == crash_after:
                raise RuntimeError(f"killed after {step}")

        if run_id == "clean":
            commit_shards(infos, run_dir, shards_dir, "train", run_id)
            return
        monkeypatch.setattr(fs, "rename_converging", rename)
        monkeypatch.setattr(fs, "delete", delete)
        with pytest.raises(RuntimeError):
            commit_shards(infos, run_dir, shards_dir, "train", run_id)
        monkeypatch.setattr(fs, "rename_converging", real_rename)
        monkeypatch.setattr(fs, "delete", real_delete)
        commit_shards(infos, run_dir, shards_dir, "train", run_id)           # the runner's retry
        commit_shards(infos, run_dir, shards_dir, "train", run_id)           # and once more: still the same

    from polycap.sharding import fs as _fs

    clean, retried = _fs.join(run_root, "clean"), _fs.join(run_root, "retried")
    commit(clean, "clean")
    commit(retried, "retried")
    want = _final_state(clean)
    assert want == _final_state(retried)
    assert not [n for n in want if ".tmp-" in n]
    shards = sorted(n for n in want if n.startswith("shards/"))
    assert shards == [f"shards/train-{i:06d}.tar" for i in range(len(shards))] and 1 < len(shards) < 12
    assert sorted(pq.read_table(io.BytesIO(_fs.read_bytes(_fs.join(retried, "manifest.parquet"))))
                  .column("shard").unique().to_pylist()) == [s.split("/")[1] for s in shards]
