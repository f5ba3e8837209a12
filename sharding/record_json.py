"""The shard `json` member: one fixed schema per shard set, and back to the record's dict shape.

Readers that infer columns from a few samples (HF `datasets`' webdataset builder reads the first five and
casts every later sample to them) need every sample to have the same keys with the same types. So the json
of a shard sample (`schemas/shard_sample.schema.json`, schema_version 2.x) is the `Sample` record with:

* `None` never written: an optional string is `""`; `ocr` is always an object (`ocr.status == ""` when no
  OCR ran), so one sample never has null where another has a value (e.g. `source.license`);
* no dict whose keys vary per sample: `captions` and `conversations` are lists with one entry per language
  of the run (`lang`, `member` = the lower-cased `{key}.<member>` text member, `present`, `why` = "" or the
  reason the member is empty: `no_caption`, `not_translated`, `translate_failed`), the same list in every
  sample of a run;
* free-form or variable-length values (`source.meta`, `caption.params`, `provenance`, `ocr.models`,
  `ocr.lines`, `hashes.content_box`, conversation `turns`) as JSON text in a `<name>_json` string field,
  since an empty list infers as `null` and a dict's keys would become columns.

`record_from_json` turns it back into `dataclasses.asdict(Sample)` shape minus image bytes (optional strings
"" read back as None), which is what `sharding/reader.py` hands to validate/stats/export/trainer and ingest.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import types
import typing
from typing import Any

from polycap.schemas import SCHEMA_VERSION, Sample

EMPTY_WHY = ("no_caption", "not_translated", "translate_failed")


def member_lang(lang: str) -> str:
    """The text member's name for a language: lower-case BCP-47 (`pt-BR` -> `pt-br`)."""
    return lang.lower()


def primary_lang(langs: list[str]) -> str:
    """The language of the primary `{key}.txt` caption: English when the run has it, else the first."""
    return "en" if "en" in langs else (sorted(langs)[0] if langs else "")


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True, allow_nan=False)


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    args = typing.get_args(tp)
    if (typing.get_origin(tp) in (typing.Union, types.UnionType)) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True
    return tp, False


def _zero(tp: Any) -> Any:
    tp, _ = _strip_optional(tp)
    if dataclasses.is_dataclass(tp):
        out = {}
        for name, ftp, _ in _fields(tp):
            if _is_container(ftp):
                out[f"{name}_json"] = "{}" if dict in (ftp, typing.get_origin(ftp)) else "[]"
            else:
                out[name] = _zero(ftp)
        return out
    return {str: "", int: 0, float: 0.0, bool: False}.get(tp, "")


_SKIP = {"bytes", "ref"}   # image bytes and the staging path are not part of the shard record


def _is_container(tp: Any) -> bool:
    return typing.get_origin(tp) in (list, dict) or tp in (list, dict)


def _fields(tp: Any) -> tuple[tuple[str, Any, bool], ...]:
    """(name, type without Optional, was Optional) of each shard-record field of dataclass `tp`, bytes and
    staging path left out."""
    return _fields_cached(tp)


@functools.cache        # resolved once: get_type_hints evaluates every annotation string on each call
def _hints(tp: Any) -> dict[str, Any]:
    return typing.get_type_hints(tp)


@functools.cache        # every sample's record walks the same few classes
def _fields_cached(tp: Any) -> tuple[tuple[str, Any, bool], ...]:
    hints = _hints(tp)
    return tuple((f.name, *_strip_optional(hints[f.name])) for f in dataclasses.fields(tp) if f.name not in _SKIP)


def _encode(value: Any, tp: Any) -> Any:
    tp, _ = _strip_optional(tp)
    if dataclasses.is_dataclass(tp):
        if value is None:
            return _zero(tp)
        out = {}
        for name, ftp, _ in _fields(tp):
            v = value[name] if isinstance(value, dict) else getattr(value, name)
            if _is_container(ftp):
                out[f"{name}_json"] = _dumps(_plain(v) if v is not None else None)
            else:
                out[name] = _encode(v, ftp)
        return out
    if value is None:
        return _zero(tp)
    if tp is float:
        return float(value)
    return value


def _plain(v: Any) -> Any:
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return dataclasses.asdict(v)
    if isinstance(v, list):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


def _why(sample: Sample, lang: str) -> str:
    if lang in sample.captions and sample.captions[lang].text:
        return ""
    if not sample.captions:
        return "no_caption"
    failed = (sample.provenance.get("translate") or {}).get("failed") or {}
    return "translate_failed" if lang in failed else "not_translated"


def sample_to_json(sample: Sample, langs: list[str] | None = None) -> dict[str, Any]:
    """The shard json of `sample` for a run whose languages are `langs` (default: the sample's own)."""
    langs = sorted(set(langs if langs is not None else sample.captions) | set(sample.captions))
    d: dict[str, Any] = {"key": sample.key, "schema_version": SCHEMA_VERSION}
    hints = _hints(Sample)
    for name in ("source", "image", "hashes", "ocr"):
        d[name] = _encode(getattr(sample, name), hints[name])
    zero_cap = _encode(None, hints["captions"].__args__[1])
    caps = []
    for lang in langs:
        cap = sample.captions.get(lang)
        entry = _encode(cap, hints["captions"].__args__[1]) if cap is not None else dict(zero_cap)
        why = _why(sample, lang)
        entry.update(lang=lang, member=f"{member_lang(lang)}.txt", present=not why, why=why)
        caps.append(entry)
    d["captions"] = caps
    d["conversations"] = [{"lang": lang, "present": bool(sample.conversations.get(lang)),
                           "turns_json": _dumps(sample.conversations.get(lang) or [])} for lang in langs]
    d["provenance_json"] = _dumps(_plain(sample.provenance))
    prim = primary_lang(langs)
    d["txt_lang"] = prim
    d["txt_why"] = _why(sample, prim) if prim else "no_caption"
    return d


def _decode(value: dict[str, Any], tp: Any) -> dict[str, Any]:
    tp, _ = _strip_optional(tp)
    out: dict[str, Any] = {}
    for name, ftp, optional in _fields(tp):
        if f"{name}_json" in value:
            out[name] = json.loads(value[f"{name}_json"])
        elif name in value:
            v = value[name]
            if dataclasses.is_dataclass(ftp) and isinstance(v, dict):
                out[name] = _decode(v, ftp)
            else:
                out[name] = None if optional and v == "" else v
    return out


def is_v2(rec: dict[str, Any]) -> bool:
    return isinstance(rec.get("captions"), list)


def record_from_json(rec: dict[str, Any]) -> dict[str, Any]:
    """The shard json -> `asdict(Sample)` shape minus image bytes: captions/conversations keyed by
    language (present ones only), `ocr` None when no OCR ran. A 1.x json (already that shape) passes as is."""
    if not is_v2(rec):
        return rec
    hints = _hints(Sample)
    out: dict[str, Any] = {"key": rec.get("key"), "schema_version": rec.get("schema_version")}
    for name in ("source", "image", "hashes"):
        out[name] = _decode(rec.get(name) or {}, hints[name])
    ocr = rec.get("ocr") or {}
    out["ocr"] = _decode(ocr, hints["ocr"]) if ocr.get("status") else None
    cap_tp = hints["captions"].__args__[1]
    out["captions"] = {c["lang"]: _decode(c, cap_tp) for c in rec.get("captions") or [] if c.get("present")}
    out["conversations"] = {c["lang"]: json.loads(c["turns_json"]) for c in rec.get("conversations") or []
                            if c.get("present")}
    out["provenance"] = json.loads(rec.get("provenance_json") or "{}")
    return out


def _build(tp: Any, value: Any) -> Any:
    tp, _ = _strip_optional(tp)
    if value is None:
        return None
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise TypeError(f"{tp.__name__}: expected an object, got {type(value).__name__}")
        hints = _hints(tp)
        return tp(**{f.name: _build(hints[f.name], value[f.name])
                     for f in dataclasses.fields(tp) if f.name in value})
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is list and args:
        return [_build(args[0], v) for v in value]
    if origin is dict and len(args) == 2:
        return {k: _build(args[1], v) for k, v in value.items()}
    return value


def sample_from_record(record: dict[str, Any], image: bytes) -> Sample:
    """A `Sample` from a record in `record_from_json` shape plus its image bytes (what the reader hands out),
    so a shard sample can go through stages again (e.g. `polycap translate` on shards) and be written back
    unchanged: `sample_to_json(sample_from_record(record_from_json(raw), jpg))` is `raw` again.
    Raises TypeError / KeyError / ValueError when the record lacks a required field or has a wrong shape."""
    rec = {**record, "image": {**(record.get("image") or {}), "bytes": image, "ref": ""}}
    sample = _build(Sample, rec)
    if not isinstance(sample, Sample):
        raise TypeError("record: not a sample")
    return sample


def langs_of(rec: dict[str, Any]) -> list[tuple[str, str]]:
    """(language, member extension) of every text member a v2 json declares, e.g. ("pt-BR", "pt-br.txt")."""
    return [(c["lang"], c["member"]) for c in rec.get("captions") or []] if is_v2(rec) else []


# ---------------------------------------------------------------- the published JSON Schema

SCHEMA_FILE = "shard_sample.schema.json"     # package data of polycap.schemas; tests check it is current


def _type_schema(tp: Any) -> dict[str, Any]:
    tp, _ = _strip_optional(tp)
    if dataclasses.is_dataclass(tp):
        return _object_schema(tp)
    return {"type": {str: "string", int: "integer", float: "number", bool: "boolean"}.get(tp, "string")}


def _object_schema(tp: Any, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    tp, _ = _strip_optional(tp)
    props: dict[str, Any] = {}
    for name, ftp, _ in _fields(tp):
        if _is_container(ftp):
            props[f"{name}_json"] = {"type": "string", "description": f"JSON text of `{name}`"}
        else:
            props[name] = _type_schema(ftp)
    props.update(extra or {})
    return {"type": "object", "properties": props, "required": sorted(props), "additionalProperties": False}


def json_schema() -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of the shard json member that `sample_to_json` writes."""
    hints = _hints(Sample)
    lang = {"type": "string", "pattern": "^[a-z]{2,3}(-[A-Za-z0-9]+)?$"}
    caption = _object_schema(hints["captions"].__args__[1], {
        "lang": lang, "member": {"type": "string", "pattern": "^[a-z]{2,3}(-[a-z0-9]+)?\\.txt$"},
        "present": {"type": "boolean"}, "why": {"enum": ["", *EMPTY_WHY]}})
    conversation = {"type": "object", "additionalProperties": False, "required": ["lang", "present", "turns_json"],
                    "properties": {"lang": lang, "present": {"type": "boolean"}, "turns_json": {"type": "string"}}}
    props = {
        "key": {"type": "string", "pattern": "^[A-Za-z0-9_-]+$"},
        "schema_version": {"type": "string"},
        "source": _object_schema(hints["source"]),
        "image": _object_schema(hints["image"]),
        "hashes": _object_schema(hints["hashes"]),
        "ocr": _object_schema(hints["ocr"]),
        "captions": {"type": "array", "items": caption},
        "conversations": {"type": "array", "items": conversation},
        "provenance_json": {"type": "string"},
        "txt_lang": {"type": "string"},
        "txt_why": {"enum": ["", *EMPTY_WHY]},
    }
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": "https://polycap/schemas/shard_sample.schema.json",
            "title": f"polycap shard sample json (schema_version {SCHEMA_VERSION})",
            "description": "The {key}.json member of a polycap shard; see sharding/record_json.py.",
            "type": "object", "properties": props, "required": sorted(props), "additionalProperties": False}


def schema_text() -> str:
    return json.dumps(json_schema(), ensure_ascii=False, indent=2, sort_keys=True) + "\n"
