"""`polycap shards export`: LLaVA / LLaMA-Factory sharegpt / InternVL files + images that those trainers load."""
from __future__ import annotations

import json
import os
from typing import Any

import pytest

from polycap.sharding.export import ExportError, export
from tests.sharding.conftest import run_write
from tests.trainer.conftest import make_samples


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory) -> str:
    d = str(tmp_path_factory.mktemp("shards") / "run")
    samples = make_samples(4) + make_samples(2, start=50, langs=("en", "ko"), conversations=False)
    run_write(sorted(samples, key=lambda s: s.key), d, max_samples=3)
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
    assert meta["length"] == 16 and not os.path.isabs(meta["root"]) and meta["annotation"] == "ivl.jsonl"


def test_bad_format_and_empty_dir(tmp_path):
    with pytest.raises(ValueError, match="format"):
        export(str(tmp_path), "coco", str(tmp_path / "x.json"))
    with pytest.raises(FileNotFoundError):
        export(str(tmp_path), "llava", str(tmp_path / "x.json"))


# ---------------------------------------------------------------- upstream loaders, re-implemented

IMAGE = "<image>"


def llava_load(data_path: str, image_folder: str) -> int:
    """haotian-liu/LLaVA llava/train/train.py: LazySupervisedDataset reads `json.load(open(data_path))`;
    __getitem__ opens `os.path.join(image_folder, image_file)`; preprocess_multimodal moves `<image>` to the
    front of the turn that has it; preprocess_v1 skips a first non-human turn, then asserts roles alternate
    human/gpt (`assert role == conv.roles[j % 2]`)."""
    from PIL import Image

    with open(data_path) as f:
        data = json.load(f)
    assert isinstance(data, list)
    for item in data:
        if "image" in item:
            Image.open(os.path.join(image_folder, item["image"])).convert("RGB")
        source = item["conversations"]
        roles = {"human": 0, "gpt": 1}
        if roles[source[0]["from"]] != 0:
            source = source[1:]
        for j, sentence in enumerate(source):
            assert roles[sentence["from"]] == j % 2
        assert sum(t["value"].count(IMAGE) for t in source) == ("image" in item)
    return len(data)


def llamafactory_load(dataset_dir: str, name: str) -> int:
    """hiyouga/LLaMA-Factory src/llamafactory/data/parser.py get_dataset_list: `dataset_info.json` in
    dataset_dir names `file_name`, `formatting` (alpaca|sharegpt|openai), `columns`, `tags` (DatasetAttr
    defaults for what it leaves out); loader.py loads `os.path.join(dataset_dir, file_name)` (json or jsonl);
    converter.py: SharegptDatasetConverter takes a first system_tag turn as the system, then wants
    user_tag|observation_tag at even and assistant_tag|function_tag at odd positions and an even count;
    OpenAIDatasetConverter turns an assistant's `tool_calls` into a function turn and merges consecutive
    observation_tag turns before the same check; AlpacaDatasetConverter builds prompt = history +
    [instruction + input], response = output; the system and tools columns are read as given; `_find_medias`
    resolves images under media_dir (= dataset_dir); mm_plugin `_validate_input` wants as many `<image>` as
    images. Returns the number of records that convert (a broken one fails the assert)."""
    info = json.load(open(os.path.join(dataset_dir, "dataset_info.json")))[name]
    path = os.path.join(dataset_dir, info["file_name"])
    text = open(path, encoding="utf-8").read()
    rows = [json.loads(x) for x in text.splitlines()] if path.endswith(".jsonl") else json.loads(text)
    cols, fmt = info.get("columns", {}), info.get("formatting", "alpaca")
    tags = {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt",
            "observation_tag": "observation", "function_tag": "function_call", "system_tag": "system",
            **info.get("tags", {})}
    for row in rows:
        images = row[cols["images"]] if cols.get("images") else []
        assert all(os.path.isfile(os.path.join(dataset_dir, i)) for i in images)
        if cols.get("system"):
            assert isinstance(row.get(cols["system"], ""), str)
        if fmt in ("sharegpt", "openai"):
            msgs = row[cols.get("messages", "conversations")]
            role, content = tags["role_tag"], tags["content_tag"]
            if msgs and msgs[0][role] == tags["system_tag"]:
                assert isinstance(msgs[0][content], str)
                msgs = msgs[1:]
            aligned = []
            for m in msgs:
                r, c = m[role], m[content]
                if fmt == "openai" and r == tags["assistant_tag"] and m.get("tool_calls"):
                    r, c = tags["function_tag"], json.dumps([t["function"] for t in m["tool_calls"]])
                if fmt == "openai" and r == tags["observation_tag"] and aligned and aligned[-1][0] == r:
                    continue                               # consecutive tool answers become one turn
                aligned.append((r, c))
            accept = [(tags["user_tag"], tags["observation_tag"]), (tags["assistant_tag"], tags["function_tag"])]
            assert len(aligned) % 2 == 0
            assert all(r in accept[i % 2] for i, (r, _) in enumerate(aligned))
            texts = [c for _, c in aligned]
        else:
            assert fmt == "alpaca"
            hist = row.get(cols.get("history", "history")) or []
            assert all(isinstance(h, list) and len(h) == 2 for h in hist)
            query = row.get(cols.get("query", "input"))
            prompt = row[cols.get("prompt", "instruction")] + ("\n" + query if query else "")
            texts = [t for h in hist for t in h] + [prompt, row[cols.get("response", "output")]]
        assert all(isinstance(t, str) for t in texts)
        assert sum(t.count(IMAGE) for t in texts) == len(images)
    return len(rows)


def internvl_load(meta_path: str) -> int:
    """OpenGVLab/InternVL internvl_chat/internvl/train/internvl_chat_finetune.py build_datasets:
    `ds_collections = json.loads(open(meta_path).read())`, per dataset `repeat_time`, `data_augment`,
    LazySupervisedDataset with `meta['root']` and `meta['annotation']` (it asserts the annotation ends in
    'jsonl' and reads it line by line); an item's image is `os.path.join(root, data_item['image'])`;
    `<image>` is prepended to the first turn when missing; our paths resolve from the meta file's folder."""
    from PIL import Image

    base = os.path.dirname(meta_path)
    n = 0
    for meta in json.loads(open(meta_path).read()).values():
        assert meta["annotation"].endswith("jsonl"), meta["annotation"]
        assert isinstance(meta["repeat_time"], (int, float)) and "data_augment" in meta
        root = os.path.join(base, meta["root"])
        with open(os.path.join(base, meta["annotation"])) as f:
            lines = f.readlines()
        assert len(lines) == meta["length"]
        for line in lines:
            item = json.loads(line)
            Image.open(os.path.join(root, item["image"])).convert("RGB")
            conv = item["conversations"]
            assert [t["from"] for t in conv] == ["human", "gpt"] * (len(conv) // 2)
            assert conv[0]["value"].count(IMAGE) == 1
            n += 1
    return n


def swift_load(path: str, base: str) -> int:
    """modelscope/ms-swift swift/llm/dataset/preprocessor/core.py MessagesPreprocessor: rows of
    `messages` [{role: system|user|assistant, content}] plus `images`; the template replaces each `<image>`
    in order with one of `images` (a count mismatch fails); json or jsonl files."""
    text = open(path, encoding="utf-8").read()
    rows = [json.loads(x) for x in text.splitlines()] if path.endswith(".jsonl") else json.loads(text)
    for row in rows:
        roles = [m["role"] for m in row["messages"] if m["role"] != "system"]
        assert roles == ["user", "assistant"] * (len(roles) // 2)
        assert sum(m["content"].count(IMAGE) for m in row["messages"]) == len(row["images"])
        assert all(os.path.isfile(os.path.join(base, i)) for i in row["images"])
    return len(rows)


def test_every_export_loads_in_its_upstream_loader(shard_dir, tmp_path):
    d = tmp_path / "exp"
    s = export(shard_dir, "llava", str(d / "llava.json"))
    assert llava_load(str(d / "llava.json"), str(d)) == s["records"] == 16
    s = export(shard_dir, "sharegpt", str(d / "mm.json"))
    assert llamafactory_load(str(d), "mm") == s["records"]
    s = export(shard_dir, "alpaca", str(d / "cap.jsonl"))
    assert llamafactory_load(str(d), "cap") == s["records"]
    info = _read(d / "dataset_info.json")
    assert set(info) == {"mm", "cap"}                 # merged, not overwritten
    s = export(shard_dir, "internvl", str(d / "ivl.jsonl"))
    assert internvl_load(s["meta_file"]) == s["records"]
    s = export(shard_dir, "swift", str(d / "swift.jsonl"))
    assert swift_load(str(d / "swift.jsonl"), str(d)) == s["records"]


@pytest.mark.parametrize("fmt, name", [("llava", "x.jsonl"), ("internvl", "x.json"), ("sharegpt", "x.txt")])
def test_names_the_loader_cannot_read_are_refused_and_leave_nothing(shard_dir, tmp_path, fmt, name):
    with pytest.raises(ExportError, match="reads only"):
        export(shard_dir, fmt, str(tmp_path / name))
    assert os.listdir(tmp_path) == []


def test_shards_that_fail_validation_are_refused_unless_forced(shard_dir, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(shard_dir, bad)
    os.remove(bad / "manifest.parquet")
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ExportError, match="validation"):
        export(str(bad), "llava", str(out / "x.json"))
    assert os.listdir(out) == []                       # no file, no empty images/ folder
    assert export(str(bad), "llava", str(out / "x.json"), force=True)["records"] == 16


def test_a_failure_midway_removes_the_images_it_wrote(shard_dir, tmp_path, monkeypatch):
    from polycap.sharding import export as ex

    calls = {"n": 0}
    real = ex.llava_record

    def boom(*a):
        calls["n"] += 1
        if calls["n"] == 5:
            raise RuntimeError("disk full")
        return real(*a)

    monkeypatch.setitem(ex.BUILDERS, "llava", boom)
    with pytest.raises(RuntimeError):
        export(shard_dir, "llava", str(tmp_path / "x.json"))
    assert os.listdir(tmp_path) == []
