"""Export shard conversations for other trainers: LLaVA JSON, LLaMA-Factory sharegpt/alpaca JSON (+ its
`dataset_info.json`), ms-swift messages, InternVL JSONL (+ meta JSON); each checked in tests/sharding/
test_export.py against a re-implementation of that trainer's loader."""
from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from typing import Any

from polycap.schemas.conversations import CHAT_ROLE
from polycap.sharding import fs
from polycap.sharding.reader import ShardSample, iter_samples
from polycap.sharding.turns import available_langs, sample_turns

FORMATS = ("llava", "sharegpt", "alpaca", "swift", "internvl")


class ExportError(ValueError):
    """An export that would not load upstream, or from shards that fail validation (without `force`)."""


# ---------------------------------------------------------------- pure functions: one record per (sample, lang)

def sample_conversations(s: ShardSample, langs: list[str] | None, captions: bool) -> Iterator[tuple[str, list]]:
    """(lang, turns) per language: the stored conversation, else (when `captions`) the caption as a
    describe-the-image turn in its own language (the same rule the bundled SFT uses)."""
    for lang in available_langs(s, "sft", captions):
        if langs and lang not in langs:
            continue
        turns = sample_turns(s, "sft", lang, captions)
        if turns:
            yield lang, turns


def llava_record(s: ShardSample, lang: str, turns: list[dict[str, str]], image: str) -> dict[str, Any]:
    """LLaVA's documented layout: {id, image, conversations: [{from: human|gpt, value}]}."""
    return {"id": f"{s.key}-{lang}", "image": image, "conversations": [dict(t) for t in turns], "lang": lang}


def sharegpt_record(s: ShardSample, lang: str, turns: list[dict[str, str]], image: str) -> dict[str, Any]:
    """LLaMA-Factory multimodal sharegpt (mllm_demo.json): {messages: [{role, content}], images: [...]}."""
    msgs = [{"role": CHAT_ROLE.get(t["from"], t["from"]), "content": t["value"]} for t in turns]
    return {"messages": msgs, "images": [image], "id": f"{s.key}-{lang}", "lang": lang}


def internvl_record(s: ShardSample, lang: str, turns: list[dict[str, str]], image: str) -> dict[str, Any]:
    """InternVL chat fine-tuning JSONL: {id, image, width, height, conversations}."""
    img = s.json.get("image") or {}
    return {"id": f"{s.key}-{lang}", "image": image, "width": img.get("width", 0), "height": img.get("height", 0),
            "conversations": [dict(t) for t in turns], "lang": lang}


def alpaca_record(s: ShardSample, lang: str, turns: list[dict[str, str]], image: str) -> dict[str, Any]:
    """LLaMA-Factory alpaca: {instruction, input, output, images, history}: the last exchange is the
    instruction/output, earlier ones the history ([[user, assistant], ...])."""
    pairs = [(turns[i]["value"], turns[i + 1]["value"]) for i in range(0, len(turns) - 1, 2)]
    (prompt, answer), history = pairs[-1], [list(p) for p in pairs[:-1]]
    if history:   # the image token goes with the first user turn, wherever that ends up
        prompt = prompt.replace("<image>", "").strip()
    return {"instruction": prompt, "input": "", "output": answer, "history": history, "images": [image],
            "id": f"{s.key}-{lang}", "lang": lang}


def swift_record(s: ShardSample, lang: str, turns: list[dict[str, str]], image: str) -> dict[str, Any]:
    """ms-swift's standard format: {messages: [{role, content}], images: [...]}, `<image>` in the text."""
    msgs = [{"role": CHAT_ROLE.get(t["from"], t["from"]), "content": t["value"]} for t in turns]
    return {"messages": msgs, "images": [image], "id": f"{s.key}-{lang}", "lang": lang}


BUILDERS = {"llava": llava_record, "sharegpt": sharegpt_record, "alpaca": alpaca_record, "swift": swift_record,
            "internvl": internvl_record}
# the out file's name each trainer can read: LLaVA json.load()s a list; InternVL asserts a .jsonl annotation
SUFFIXES = {"llava": (".json",), "internvl": (".jsonl",), "sharegpt": (".json", ".jsonl"),
            "alpaca": (".json", ".jsonl"), "swift": (".json", ".jsonl")}


def side_files(fmt: str, out_file: str, images_dir: str, n: int) -> dict[str, Any]:
    """What the target trainer needs to register the file: LLaMA-Factory's `dataset_info` entry, InternVL's
    meta entry (root and annotation relative to the meta file's folder, which is the export folder)."""
    name = _stem(out_file)
    if fmt == "sharegpt":
        return {"dataset_info": {name: {
            "file_name": fs.basename(out_file), "formatting": "sharegpt",
            "columns": {"messages": "messages", "images": "images"},
            "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                     "assistant_tag": "assistant", "system_tag": "system"}}}}
    if fmt == "alpaca":
        return {"dataset_info": {name: {
            "file_name": fs.basename(out_file), "formatting": "alpaca",
            "columns": {"prompt": "instruction", "query": "input", "response": "output", "history": "history",
                        "images": "images"}}}}
    if fmt == "internvl":
        return {"meta": {name: {"root": "./", "annotation": fs.basename(out_file), "data_augment": False,
                                "repeat_time": 1, "length": n}}}
    return {}


def _stem(path: str) -> str:
    name = fs.basename(path)
    return name.rsplit(".", 1)[0] if "." in name.lstrip(".") else name


# ---------------------------------------------------------------- the export

def export(shard_dir: str, fmt: str, out_file: str, langs: list[str] | None = None,
           captions: bool = True, force: bool = False) -> dict[str, Any]:
    """Write `out_file` (JSON array, or JSONL for a `.jsonl` name) and `images/{key}.jpg` beside it.

    One record per (sample, language). Image paths in records are relative to the out file's folder.
    Shards that fail `validate` are refused unless `force`. A failure leaves nothing behind: the file is
    written atomically and images written so far (and an `images/` folder this call made) are removed.
    LLaMA-Factory formats merge their entry into `dataset_info.json` in the export folder; InternVL gets
    `{stem}.meta.json`. Returns a summary: counts per language, samples without text, side files.
    Shards and the export may be on any filesystem (sharding/fs.py).
    """
    from polycap.sharding.reader import list_shards
    from polycap.sharding.validate import validate_dir

    if fmt not in FORMATS:
        raise ValueError(f"--format: {fmt!r} is not one of {', '.join(FORMATS)}")
    out_file = fs.abs_path(out_file)
    if not out_file.endswith(SUFFIXES[fmt]):
        raise ExportError(f"--out: {fs.basename(out_file)!r}: {fmt} reads only {' or '.join(SUFFIXES[fmt])} "
                          f"files (" + ("LLaVA json.load()s one JSON list" if fmt == "llava" else
                                        "InternVL asserts its annotation ends in jsonl" if fmt == "internvl"
                                        else "JSON list or JSON lines") + ")")
    if not list_shards(shard_dir):
        raise FileNotFoundError(f"no shard samples under {shard_dir}")
    if not force:
        rep = validate_dir(shard_dir)
        if not rep.ok:
            raise ExportError(f"{shard_dir}: shards fail validation ({len(rep.errors)} errors, first: "
                              f"{rep.errors[0]}); `polycap shards validate` says more, --force exports anyway")
    out_dir = fs.parent(out_file)
    images_dir = fs.join(out_dir, "images")
    had_images_dir = fs.exists(images_dir)
    written: list[str] = []
    try:
        summary = _write(shard_dir, fmt, out_file, out_dir, images_dir, langs, captions, written)
    except BaseException:
        fs.delete(written)
        if not had_images_dir:
            fs.remove_empty_dir(images_dir)
        raise
    stem = _stem(out_file)
    if "dataset_info" in summary:     # LLaMA-Factory reads dataset_dir/dataset_info.json: merge our entry
        info_file = fs.join(out_dir, "dataset_info.json")
        info = fs.read_json(info_file) if fs.is_file(info_file) else {}
        if not isinstance(info, dict):
            raise ExportError(f"{info_file}: not a JSON object; not merging into it")
        info.update(summary["dataset_info"])
        fs.write_json(info_file, info)
        summary["dataset_info_file"] = info_file
    if "meta" in summary:
        summary["meta_file"] = fs.join(out_dir, f"{stem}.meta.json")
        fs.write_json(summary["meta_file"], summary["meta"])
    return summary


def _write(shard_dir: str, fmt: str, out_file: str, out_dir: str, images_dir: str, langs: list[str] | None,
           captions: bool, written: list[str]) -> dict[str, Any]:
    jsonl = out_file.endswith(".jsonl")
    build = BUILDERS[fmt]
    per_lang: Counter = Counter()
    samples = no_text = 0
    with fs.atomic_create(out_file) as out:
        def write(text: str) -> None:
            out.write(text.encode("utf-8"))

        write("" if jsonl else "[\n")
        first = True
        for s in iter_samples(shard_dir):
            samples += 1
            convs = list(sample_conversations(s, langs, captions))
            if not convs:
                no_text += 1
                continue
            rel = f"images/{s.key}.jpg"
            path = fs.join(out_dir, rel)
            if not fs.is_file(path):
                written.append(path)
                fs.write_bytes(path, s.jpg)
            for lang, turns in convs:
                rec = json.dumps(build(s, lang, turns, rel), ensure_ascii=False)
                write(rec + "\n" if jsonl else ("" if first else ",\n") + rec)
                first = False
                per_lang[lang] += 1
        if samples == 0:   # raising inside leaves no file behind (and keeps an older one on a disk)
            raise FileNotFoundError(f"no shard samples under {shard_dir}")
        write("" if jsonl else "\n]\n")
    n = sum(per_lang.values())
    return {"format": fmt, "out": out_file, "images_dir": images_dir, "samples": samples, "records": n,
            "images_written": len(written), "records_per_lang": dict(sorted(per_lang.items())),
            "samples_without_text": no_text, **side_files(fmt, out_file, images_dir, n)}
