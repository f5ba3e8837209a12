"""Export shard conversations for other trainers: LLaVA JSON, LLaMA-Factory sharegpt JSON, InternVL JSONL."""
from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from typing import Any

from polycap.schemas.conversations import CHAT_ROLE
from polycap.sharding import fs
from polycap.sharding.reader import ShardSample, iter_samples
from polycap.sharding.turns import available_langs, sample_turns

FORMATS = ("llava", "sharegpt", "internvl")


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


BUILDERS = {"llava": llava_record, "sharegpt": sharegpt_record, "internvl": internvl_record}


def side_files(fmt: str, out_file: str, images_dir: str, n: int) -> dict[str, Any]:
    """What the target trainer needs to register the file (LLaMA-Factory dataset_info, InternVL meta)."""
    name = _stem(out_file)
    if fmt == "sharegpt":
        return {"dataset_info": {name: {
            "file_name": fs.basename(out_file), "formatting": "sharegpt",
            "columns": {"messages": "messages", "images": "images"},
            "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                     "assistant_tag": "assistant", "system_tag": "system"}}}}
    if fmt == "internvl":
        return {"meta": {name: {"root": fs.parent(fs.abs_path(images_dir)),
                                "annotation": fs.abs_path(out_file), "data_augment": False,
                                "repeat_time": 1, "length": n}}}
    return {}


def _stem(path: str) -> str:
    name = fs.basename(path)
    return name.rsplit(".", 1)[0] if "." in name.lstrip(".") else name


# ---------------------------------------------------------------- the export

def export(shard_dir: str, fmt: str, out_file: str, langs: list[str] | None = None,
           captions: bool = True) -> dict[str, Any]:
    """Write `out_file` (JSON array; JSONL for internvl or a `.jsonl` name) and `images/{key}.jpg` beside it.

    One record per (sample, language). Image paths in records are relative to the out file's folder.
    Returns a summary: counts per language, samples without any usable conversation, side-file contents.
    Shards and the export may be on any filesystem (sharding/fs.py); the file is written atomically.
    """
    if fmt not in FORMATS:
        raise ValueError(f"--format: {fmt!r} is not one of {', '.join(FORMATS)}")
    out_file = fs.abs_path(out_file)
    out_dir = fs.parent(out_file)
    images_dir = fs.join(out_dir, "images")
    jsonl = fmt == "internvl" or out_file.endswith(".jsonl")
    build = BUILDERS[fmt]
    per_lang: Counter = Counter()
    samples = images = no_text = 0
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
                fs.write_bytes(path, s.jpg)
                images += 1
            for lang, turns in convs:
                rec = json.dumps(build(s, lang, turns, rel), ensure_ascii=False)
                write(rec + "\n" if jsonl else ("" if first else ",\n") + rec)
                first = False
                per_lang[lang] += 1
        if samples == 0:   # raising inside leaves no file behind (and keeps an older one on a disk)
            raise FileNotFoundError(f"no shard samples under {shard_dir}")
        write("" if jsonl else "\n]\n")
    n = sum(per_lang.values())
    summary = {"format": fmt, "out": out_file, "images_dir": images_dir, "samples": samples, "records": n,
               "images_written": images, "records_per_lang": dict(sorted(per_lang.items())),
               "samples_without_text": no_text, **side_files(fmt, out_file, images_dir, n)}
    stem = _stem(out_file)
    for key in ("dataset_info", "meta"):   # beside the file, never over an existing dataset_info.json
        if key in summary:
            summary[f"{key}_file"] = fs.join(out_dir, f"{stem}.{key}.json")
            fs.write_json(summary[f"{key}_file"], summary[key])
    return summary
