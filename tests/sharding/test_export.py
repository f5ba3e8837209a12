"""`polycap shards export`: LLaVA / LLaMA-Factory sharegpt / InternVL files + images that those trainers load."""
from __future__ import annotations

import json
import os
from typing import Any

import pytest

from polycap.sharding.export import export
from tests.trainer.conftest import make_samples, write_shards


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory) -> str:
    d = str(tmp_path_factory.mktemp("shards"))
    samples = make_samples(4) + make_samples(2, start=50, langs=("en", "ko"), conversations=False)
    write_shards(d, sorted(samples, key=lambda s: s.key), per_shard=3)
    return d


def _read(path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _llava_shape(rec: dict) -> None:
    """The structure LLaVA's LazySupervisedDataset reads (as in ../shared/eval/text/derived/*.json)."""
    assert isinstance(rec["id"], str) and isinstance(rec["image"], str)
    turns = rec["conversations"]
    assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2)
    assert all(set(t) == {"from", "value"} and isinstance(t["value"], str) for t in turns)
    assert turns[0]["value"].count("<image>") == 1
    assert sum(t["value"].count("<image>") for t in turns) == 1


def test_llava_export_matches_reference_structure(shard_dir, tmp_path, eval_dir):
    summary = export(shard_dir, "llava", str(tmp_path / "llava.json"))
    records = _read(tmp_path / "llava.json")
    reference = _read(eval_dir / "text" / "derived" / "coco_captions_80_caption_task.json")
    for ref in reference[:5]:
        _llava_shape(ref)                      # the checker accepts the real LLaVA file...
    for rec in records:
        _llava_shape(rec)                      # ...and ours
        assert {"id", "image", "conversations"} <= set(rec) <= set(reference[0]) | {"lang"}
        assert os.path.getsize(tmp_path / rec["image"]) > 0
    assert summary["records"] == len(records) == 4 * 3 + 2 * 2
    assert summary["records_per_lang"] == {"en": 6, "ko": 6, "vi": 4}
    assert summary["images_written"] == 6 and summary["samples"] == 6
    # LLaVA's own jsonl files name images by relative file name, as ours do
    with open(eval_dir / "text" / "llava" / "qa90_questions.jsonl", encoding="utf-8") as f:
        bench = json.loads(f.readline())
    assert not os.path.isabs(bench["image"]) and not os.path.isabs(records[0]["image"])
    # caption-only samples become a describe turn in the caption's language
    ko = [r for r in records if r["lang"] == "ko" and len(r["conversations"]) == 2]
    assert ko and all(r["conversations"][0]["value"].startswith("<image>\n이 이미지") for r in ko)


def test_sharegpt_export_matches_llamafactory_demo(shard_dir, tmp_path, eval_dir):
    summary = export(shard_dir, "sharegpt", str(tmp_path / "mm.json"), langs=["vi"])
    demo = _read(eval_dir / "text" / "llamafactory" / "mllm_demo.json")
    records = _read(tmp_path / "mm.json")
    assert len(records) == summary["records"] == 4
    for rec in records:
        assert {"messages", "images"} <= set(rec) and set(demo[0]) <= set(rec)
        assert [m["role"] for m in rec["messages"]][:2] == ["user", "assistant"]
        assert set(rec["messages"][0]) == set(demo[0]["messages"][0])
        assert sum(m["content"].count("<image>") for m in rec["messages"]) == len(rec["images"]) == 1
    info = _read(summary["dataset_info_file"])
    assert info["mm"]["formatting"] == "sharegpt" and info["mm"]["file_name"] == "mm.json"


def test_internvl_jsonl_and_meta(shard_dir, tmp_path):
    summary = export(shard_dir, "internvl", str(tmp_path / "ivl.jsonl"))
    lines = [json.loads(x) for x in (tmp_path / "ivl.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(lines) == summary["records"] == 16
    assert all(r["width"] == 96 and r["height"] == 96 and r["conversations"][0]["from"] == "human" for r in lines)
    meta = _read(summary["meta_file"])["ivl"]
    assert meta["length"] == 16 and os.path.isdir(os.path.join(meta["root"], "images"))


def test_bad_format_and_empty_dir(tmp_path):
    with pytest.raises(ValueError, match="format"):
        export(str(tmp_path), "coco", str(tmp_path / "x.json"))
    with pytest.raises(FileNotFoundError):
        export(str(tmp_path), "llava", str(tmp_path / "x.json"))
