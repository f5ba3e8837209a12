"""`polycap translate` on shards: one output shard set that passes `shards validate`, each image stored once,
captions and json updated, a failed language an empty member with a reject row, loadable by HF `datasets`."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from polycap.pipelines.translate import UsageError, run
from polycap.schemas import Caption
from polycap.schemas.config import ShardsConfig, TranslateConfig
from polycap.sharding import record_json
from polycap.sharding.reader import iter_samples, list_shards
from polycap.sharding.validate import validate_dir
from polycap.transforms.build_records import build_records
from tests.fakes.fake_translator import FAKE  # deterministic TEST backend, not a model
from tests.sharding.conftest import decoded_sample, run_write

FAIL = "FAKEFAILALWAYS the dog and the cat are on the beach with the man."
CFG = TranslateConfig(backend=FAKE, model="fake")
SCHEMA_FILE = Path(__file__).resolve().parents[2] / "schemas" / record_json.SCHEMA_FILE


def _inputs(eval_dir: Path) -> list:
    """Six real photos as `polycap run` leaves them: English captions (two with a Vietnamese one already), one
    caption the fake translator always fails, one sample without any caption; conversations built."""
    out = []
    for i, p in enumerate(sorted((eval_dir / "photos" / "img2dataset_tests").glob("*.jpg"))[:6]):
        s = decoded_sample(p.read_bytes(), str(p), "img2dataset", ("en", "vi") if i in (1, 3) else ("en",))
        s = dataclasses.replace(s, captions={**s.captions, "en": Caption(f"A photo number {i} of a red car.",
                                                                         "source", backend="test")})
        if i == 4:
            s = dataclasses.replace(s, captions={"en": Caption(FAIL, "source", backend="test")})
        if i == 5:
            s = dataclasses.replace(s, captions={})
        out.append(build_records(s))
    return out


@pytest.fixture(scope="module")
def translated(eval_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("tshards")
    samples = _inputs(eval_dir)
    run_write(samples, str(root / "in"), max_samples=2)
    assert validate_dir(str(root / "in")).ok
    stats = run(str(root / "in"), ["ko", "vi"], str(root / "out"), CFG, shards=ShardsConfig(max_samples=4))
    return root, samples, stats


def _by_key(path) -> dict:
    return {s.key: s for s in iter_samples(str(path))}


def test_one_shard_set_that_validates_with_counts_per_language(translated):
    root, samples, stats = translated
    failed = next(s.key for s in samples if s.captions.get("en") and s.captions["en"].text == FAIL)
    assert stats["inputs"] == 6 and stats["samples_written"] == 6 and stats["balanced"]
    assert stats["langs"] == {lang: {"kept": 5, "rejected": 1, "balanced": True} for lang in ("ko", "vi")}
    assert stats["no_english_text"] == 1 and stats["shards"] == 2 and stats["split"] == "train"
    report = validate_dir(str(root / "out"))
    assert report.ok, report.errors
    assert report.samples == 6 and not report.warnings
    assert sorted(os.listdir(root / "out")) == ["_cache", "_inputs.json", "_stats.json", "manifest.parquet",
                                                "rejects", "shards"]          # no per-language copies, no staging
    rejects = pq.read_table(str(root / "out" / "rejects")).to_pylist()
    assert sorted((r["key"], r["stage"], r["detail"].split()[0]) for r in rejects) == [
        (failed, "translate", "lang=ko"), (failed, "translate", "lang=vi")]
    assert {r["reason"] for r in rejects} == {"gate_english_left"}
    manifest = pq.read_table(str(root / "out" / "manifest.parquet")).to_pylist()
    assert sorted(r["key"] for r in manifest) == sorted(s.key for s in samples)


def test_each_image_stored_once_and_unchanged(translated):
    root, samples, _ = translated
    jpgs = []
    for shard in list_shards(str(root / "out")):
        with tarfile.open(shard) as tf:
            jpgs += [m.name for m in tf if m.name.endswith(".jpg")]
    assert sorted(jpgs) == sorted(f"{s.key}.jpg" for s in samples)
    got = _by_key(root / "out")
    for s in samples:
        assert got[s.key].jpg == s.image.bytes


def test_captions_json_and_provenance_updated_everything_else_kept(translated):
    import jsonschema

    root, samples, _ = translated
    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA_FILE.read_text(encoding="utf-8")))
    before, after = _by_key(root / "in"), _by_key(root / "out")
    for s in samples:
        a, b = before[s.key], after[s.key]
        validator.validate(b.raw)
        for part in ("source", "image", "hashes", "ocr"):
            assert b.raw[part] == a.raw[part], part
        assert [c["lang"] for c in b.raw["captions"]] == ["en", "ko", "vi"]
        assert set(b.texts) == {"en", "ko", "vi"} and b.texts["en"] == a.texts["en"] and b.txt == a.txt
        caps = {c["lang"]: c for c in b.raw["captions"]}
        prov = json.loads(b.raw["provenance_json"]).get("translate", {})
        en = s.captions.get("en")
        if en is None:                                     # nothing to translate: members empty, never invented
            assert not any(b.texts.values()) and {c["why"] for c in caps.values()} == {"no_caption"}
        elif en.text == FAIL:                              # both languages failed: empty members that say why
            assert b.texts["ko"] == b.texts["vi"] == ""
            assert caps["ko"]["why"] == caps["vi"]["why"] == "translate_failed"
            assert set(prov["failed"]) == {"ko", "vi"} and not prov["langs"]
            assert {c["lang"]: c["present"] for c in b.raw["conversations"]} == {"en": True, "ko": False,
                                                                                 "vi": False}
        else:
            for lang in ("ko", "vi"):
                assert b.texts[lang] and b.texts[lang] != en.text and caps[lang]["present"]
                assert caps[lang]["kind"] == "translation" and caps[lang]["translated_from"] == "en"
                turns = json.loads(next(c["turns_json"] for c in b.raw["conversations"] if c["lang"] == lang))
                assert turns[-1]["value"] == b.texts[lang]   # the conversation carries the new caption
            assert set(prov["langs"]) == {"ko", "vi"} and not prov["failed"]
            if "vi" in s.captions:                         # an existing Vietnamese caption is replaced
                assert b.texts["vi"] != a.texts["vi"]


@pytest.mark.parametrize("streaming", [False, True])
def test_hf_datasets_and_webdataset_load_the_output(translated, tmp_path, monkeypatch, streaming):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    import webdataset as wds
    from datasets import load_dataset

    root, samples, _ = translated
    shards = list_shards(str(root / "out"))
    ds = load_dataset("webdataset", data_files={"train": shards}, split="train", streaming=streaming,
                      cache_dir=str(tmp_path / "hf"))
    want = _by_key(root / "out")
    rows = list(ds)
    assert len(rows) == len(want) == len(samples)
    for row in rows:
        s = want[row["__key__"]]
        assert {"jpg", "json", "txt", "en.txt", "ko.txt", "vi.txt"} <= set(row)
        assert row["json"] == s.raw and row["ko.txt"] == s.texts["ko"] and row["jpg"].size[0] > 0
    got = list(wds.WebDataset(shards, shardshuffle=False, empty_check=False).to_tuple("jpg", "ko.txt", "json"))
    assert len(got) == len(samples)


def test_translating_the_output_again_keeps_the_other_language(translated, tmp_path):
    """A second translation (ko only) of the translated set: ko redone, vi and its provenance kept."""
    root, samples, _ = translated
    stats = run(str(root / "out"), ["ko"], str(tmp_path / "again"), CFG)
    assert stats["inputs"] == 6 and stats["balanced"]
    before, after = _by_key(root / "out"), _by_key(tmp_path / "again")
    assert validate_dir(str(tmp_path / "again")).ok
    for key, b in after.items():
        assert b.texts == before[key].texts
        prov_b = json.loads(b.raw["provenance_json"])["translate"]
        prov_a = json.loads(before[key].raw["provenance_json"])["translate"]
        assert {k: set(v) for k, v in prov_b.items()} == {k: set(v) for k, v in prov_a.items()}
        if "vi" in prov_a["langs"]:
            assert prov_b["langs"]["vi"] == prov_a["langs"]["vi"]     # the first run's record of vi, as it was


def test_unreadable_and_duplicate_input_are_rejects_and_a_rerun_replaces_the_set(translated, tmp_path):
    root, samples, _ = translated
    src = tmp_path / "in"
    src.mkdir()
    tars = list_shards(str(root / "in"))                     # 3 tars of 2 samples
    for t in tars:
        shutil.copy(t, src)
    shutil.copy(tars[0], src / "train-000003.tar")           # the same two samples again
    data = (src / "train-000001.tar").read_bytes()
    (src / "train-000001.tar").write_bytes(data[: len(data) // 2])   # cut short
    out = tmp_path / "out"
    stats = run(str(src), ["ko"], str(out), CFG, shards=ShardsConfig(max_samples=2))
    assert stats["inputs"] == 9 - 2 and stats["bad_records"] == 3 and stats["samples_written"] == 4
    assert stats["balanced"] and stats["langs"]["ko"]["kept"] + stats["langs"]["ko"]["rejected"] == 7
    rejects = pq.read_table(str(out / "rejects")).to_pylist()
    read = sorted((r["stage"], r["reason"]) for r in rejects if r["stage"] == "translate_read")
    assert read == [("translate_read", "duplicate"), ("translate_read", "duplicate"),
                    ("translate_read", "unreadable")]
    assert validate_dir(str(out)).ok and len(list_shards(str(out))) == 2
    # a smaller input into the same OUT: the split's shards and manifest rows are replaced, none left stale
    one = tmp_path / "one"
    one.mkdir()
    shutil.copy(tars[2], one)
    assert run(str(one), ["ko"], str(out), CFG)["samples_written"] == 2
    assert validate_dir(str(out)).ok and len(list_shards(str(out))) == 1
    assert pq.read_table(str(out / "manifest.parquet")).num_rows == 2


def test_shards_of_two_splits_are_refused(translated, tmp_path):
    root, _, _ = translated
    tars = list_shards(str(root / "in"))
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(tars[0], src / "train-000000.tar")
    shutil.copy(tars[1], src / "val-000000.tar")
    with pytest.raises(UsageError, match="one split at a time"):
        run(str(src), ["ko"], str(tmp_path / "out"), CFG)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_shards_on_s3(translated, s3_server):
    """Input and output on an object store (moto's S3 server): the same shard set, staging removed."""
    root, samples, _ = translated
    bucket = s3_server.bucket("tshards")
    for t in list_shards(str(root / "in")):
        s3_server.put("tshards", f"in/shards/{os.path.basename(t)}", Path(t).read_bytes())
    stats = run(f"{bucket}/in", ["ko"], f"{bucket}/out", CFG, pipeline_args=list(s3_server.args))
    assert stats["balanced"] and stats["samples_written"] == len(samples)
    keys = s3_server.keys("tshards", "out/")
    assert not [k for k in keys if "_staging" in k] and "out/manifest.parquet" in keys
    from polycap.sharding import fs

    fs.configure(s3_server.args)
    report = validate_dir(f"{bucket}/out")
    assert report.ok and report.samples == len(samples), report.errors
    with pytest.raises(UsageError):
        run(f"{bucket}/out", ["ko"], f"{bucket}/out", CFG, pipeline_args=list(s3_server.args))


def test_cli_translate_then_shards_validate(translated, tmp_path):
    from typer.testing import CliRunner

    from polycap.pipelines.cli import EXIT_OK, app

    root, samples, _ = translated
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["translate", str(root / "in" / "shards"), "--to", "ko", "--out", str(out),
                                   "--set", f"backend={FAKE}", "--set", "model=fake"])
    assert res.exit_code == EXIT_OK, res.output
    assert json.loads(res.stdout)["samples_written"] == len(samples)
    res = CliRunner().invoke(app, ["shards", "validate", str(out)])
    assert res.exit_code == EXIT_OK, res.output
    assert json.loads(res.stdout)["ok"] and json.loads(res.stdout)["samples"] == len(samples)
