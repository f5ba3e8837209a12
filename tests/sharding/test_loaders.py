"""Shards load in upstream readers that infer one schema: HF `datasets` (webdataset builder, streaming and
not) and `webdataset` `.to_tuple`, across caption-less samples, gated languages, mixed licences, OCR on some
samples only, and shards of two runs combined; every json member matches schemas/shard_sample.schema.json."""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest

from polycap.schemas import Caption, OcrLine, OcrResult, Sample
from polycap.sharding import record_json
from polycap.sharding.reader import iter_samples, list_shards
from polycap.sharding.validate import validate_dir
from tests.sharding.conftest import run_write

SCHEMA_FILE = Path(__file__).resolve().parents[2] / "schemas" / record_json.SCHEMA_FILE
RUN_LANGS = ["en", "ko", "pt-BR"]


def _variant(s: Sample, i: int) -> Sample:
    """Sample i of a mix: the first ones (in key order) carry as little as a sample can."""
    caps = {"en": Caption(text=f"caption {i}", kind="source", backend="test")}
    if i % 3 != 2:
        caps["ko"] = Caption(text=f"캡션 {i}", kind="translation", backend="test", translated_from="en",
                             params={"temperature": 0.2})
    if i % 4 == 1:
        caps["pt-BR"] = Caption(text=f"legenda {i}", kind="translation", translated_from="en")
    ocr = (OcrResult(engine="fake", models={"det": "d"}, lines=[OcrLine("STOP", [1, 2, 3, 4], [1] * 8, 0.9)],
                     lang="en", text_area_ratio=0.1) if i % 2 else None)
    return dataclasses.replace(
        s, captions=caps if i >= 2 else {},           # two caption-less samples first
        source=dataclasses.replace(s.source, license="CC-BY-4.0" if i % 2 else None,
                                   meta={"row": i, f"col{i}": "x"}, orig_caption=None if i < 3 else "orig"),
        hashes=dataclasses.replace(s.hashes, phash="0f" * 8 if i > 4 else None,
                                   content_box=[0, 0, 5, 5] if i > 5 else []),
        ocr=ocr,
        conversations={"en": [{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "a"}]}
        if i > 6 else {},
        provenance={"translate": {"langs": ["ko"], "failed": {"pt-BR": "gate_length"}}} if i > 2 else {})


@pytest.fixture(scope="module")
def two_runs(photo_samples, tmp_path_factory) -> list[str]:
    base = tmp_path_factory.mktemp("loaders")
    ordered = sorted(photo_samples, key=lambda s: s.key)
    mixed = [_variant(s, i) for i, s in enumerate(ordered)]
    a, b = mixed[:6], mixed[6:]
    # both runs have every language of RUN_LANGS in some sample; each is a shard set of its own
    assert all(set().union(*(s.captions for s in run)) == set(RUN_LANGS) for run in (a, b))
    run_write(a, str(base / "a"), max_samples=5)
    run_write(b, str(base / "b"), max_samples=2, split="val")
    for run in ("a", "b"):
        assert validate_dir(str(base / run)).ok, validate_dir(str(base / run)).errors
    return list_shards(str(base / "a")) + list_shards(str(base / "b"))


def test_schema_file_is_current():
    """The published JSON Schema is generated from the record dataclasses; regenerate with
    `python -c "from polycap.sharding.record_json import schema_text; print(schema_text(), end='')"`."""
    assert SCHEMA_FILE.read_text(encoding="utf-8") == record_json.schema_text()


def test_every_written_json_matches_the_schema_and_reads_back(two_runs, photo_samples):
    import jsonschema

    schema = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    validator = jsonschema.Draft202012Validator(schema)
    n = 0
    for shard in two_runs:
        for s in iter_samples(shard):
            validator.validate(s.raw)
            n += 1
            assert [c["lang"] for c in s.raw["captions"]] == RUN_LANGS
            assert set(s.texts) == set(RUN_LANGS)
            for c in s.raw["captions"]:
                assert c["present"] == bool(s.texts[c["lang"]]) and (c["why"] == "") == c["present"]
            assert s.txt == s.texts["en"] and s.raw["txt_why"] == ("" if s.txt else "no_caption")
    assert n == 12
    bad = json.loads(json.dumps(s.raw))
    bad["source"]["license"] = None
    with pytest.raises(jsonschema.ValidationError):
        validator.validate(bad)


def _why(raw: dict, lang: str) -> str:
    return next(c["why"] for c in raw["captions"] if c["lang"] == lang)


def test_empty_members_say_why(two_runs):
    whys = {}
    for shard in two_runs:
        for s in iter_samples(shard):
            whys.setdefault(_why(s.raw, "pt-BR"), 0)
            whys[_why(s.raw, "pt-BR")] += 1
    assert set(whys) == {"", "no_caption", "not_translated", "translate_failed"}, whys


@pytest.mark.parametrize("streaming", [False, True])
def test_hf_datasets_loads_both_runs_without_dropping_a_field(two_runs, tmp_path, monkeypatch, streaming):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    from datasets import load_dataset

    ds = load_dataset("webdataset", data_files={"train": two_runs}, split="train", streaming=streaming,
                      cache_dir=str(tmp_path / "hf"))
    rows = list(ds)
    want = {s.key: s for shard in two_runs for s in iter_samples(shard)}
    assert len(rows) == len(want) == 12
    members = {"jpg", "json", "txt", "en.txt", "ko.txt", "pt-br.txt"}
    for row in rows:
        s = want[row["__key__"]]
        assert members <= set(row) and all(row[m] is not None for m in members)
        assert row["json"] == s.raw                       # every field, with its value
        assert row["txt"] == s.txt and row["pt-br.txt"] == s.texts["pt-BR"]
        assert row["jpg"].size[0] > 0


def test_webdataset_to_tuple_reads_every_sample(two_runs):
    import webdataset as wds

    for fields in (("jpg", "txt"), ("jpg", "ko.txt"), ("jpg", "pt-br.txt", "json")):
        got = list(wds.WebDataset(two_runs, shardshuffle=False, empty_check=False).to_tuple(*fields))
        assert len(got) == 12, fields


def test_mixed_case_tags_never_collide(photo_samples):
    from polycap.sharding.writer import ShardWriteError, sample_members

    s = dataclasses.replace(photo_samples[0], captions={"pt-BR": Caption("a", "source"),
                                                        "pt-br": Caption("b", "source")})
    with pytest.raises(ShardWriteError, match="case"):
        sample_members(s)
    names = [os.path.basename(n) for n, _ in sample_members(photo_samples[0], ["en", "pt-BR"])]
    assert sum(n.endswith(".pt-br.txt") for n in names) == 1 and not any("pt-BR" in n for n in names)
