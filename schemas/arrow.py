"""pyarrow schemas for Sample and Reject, and lossless row conversions (free-form dicts travel as JSON)."""
from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

import pyarrow as pa

from polycap.schemas.reasons import Reason
from polycap.schemas.records import Caption, Hashes, ImageInfo, OcrLine, OcrResult, Reject, Sample, Source

# Free-form dict fields are stored as JSON strings; everything else has a native arrow type.
JSON_FIELDS = {"meta", "models", "params", "provenance"}

SOURCE_TYPE = pa.struct([
    ("name", pa.string()), ("uri", pa.string()), ("kind", pa.string()), ("license", pa.string()),
    ("orig_caption", pa.string()), ("meta", pa.string()),
])
IMAGE_TYPE = pa.struct([
    ("bytes", pa.binary()), ("format", pa.string()), ("width", pa.int32()), ("height", pa.int32()),
    ("orig_format", pa.string()), ("orig_width", pa.int32()), ("orig_height", pa.int32()), ("ref", pa.string()),
])
HASHES_TYPE = pa.struct([("sha256", pa.string()), ("phash", pa.string())])
OCR_LINE_TYPE = pa.struct([
    ("text", pa.string()), ("box", pa.list_(pa.int16())), ("quad", pa.list_(pa.int16())),
    ("score", pa.float32()),
])
OCR_TYPE = pa.struct([
    ("engine", pa.string()), ("models", pa.string()), ("status", pa.string()),
    ("lines", pa.list_(OCR_LINE_TYPE)), ("lang", pa.string()), ("text_area_ratio", pa.float32()),
    ("error", pa.string()),
])
CAPTION_TYPE = pa.struct([
    ("text", pa.string()), ("kind", pa.string()), ("backend", pa.string()), ("model", pa.string()),
    ("prompt_id", pa.string()), ("prompt_sha256", pa.string()), ("translated_from", pa.string()),
    ("params", pa.string()), ("created", pa.string()), ("quality", pa.string()),
])
TURN_TYPE = pa.struct([("from", pa.string()), ("value", pa.string())])

SAMPLE_SCHEMA = pa.schema([
    ("key", pa.string()),
    ("source", SOURCE_TYPE),
    ("image", IMAGE_TYPE),
    ("hashes", HASHES_TYPE),
    ("ocr", OCR_TYPE),
    ("captions", pa.map_(pa.string(), CAPTION_TYPE)),
    ("conversations", pa.map_(pa.string(), pa.list_(TURN_TYPE))),
    ("provenance", pa.string()),
])

REJECT_SCHEMA = pa.schema([
    ("key", pa.string()), ("source_uri", pa.string()), ("stage", pa.string()), ("reason", pa.string()),
    ("detail", pa.string()), ("time", pa.string()), ("source_name", pa.string()),
])


def _jsonify(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (json.dumps(v, sort_keys=True, ensure_ascii=False) if k in JSON_FIELDS else v)
            for k, v in d.items()}


def _unjson(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (json.loads(v) if k in JSON_FIELDS and v is not None else v) for k, v in d.items()}


def sample_to_row(s: Sample, with_bytes: bool = True) -> dict[str, Any]:
    image = asdict(s.image)
    if not with_bytes:
        image["bytes"] = None
    return {
        "key": s.key,
        "source": _jsonify(asdict(s.source)),
        "image": image,
        "hashes": asdict(s.hashes),
        "ocr": _jsonify(asdict(s.ocr)) if s.ocr is not None else None,
        "captions": [(lang, _jsonify(asdict(c))) for lang, c in sorted(s.captions.items())],
        "conversations": [(lang, turns) for lang, turns in sorted(s.conversations.items())],
        "provenance": json.dumps(s.provenance, sort_keys=True, ensure_ascii=False),
    }


def sample_from_row(row: dict[str, Any]) -> Sample:
    ocr = None
    if row.get("ocr") is not None:
        o = _unjson(row["ocr"])
        o["lines"] = [OcrLine(**ln) for ln in o["lines"] or []]
        ocr = OcrResult(**o)
    captions = {lang: Caption(**_unjson(c)) for lang, c in (row.get("captions") or [])}
    convs = {lang: [dict(t) for t in turns] for lang, turns in (row.get("conversations") or [])}
    image = dict(row["image"])
    image["bytes"] = image["bytes"] or b""
    return Sample(
        key=row["key"], source=Source(**_unjson(row["source"])), image=ImageInfo(**image),
        hashes=Hashes(**row["hashes"]), ocr=ocr, captions=captions, conversations=convs,
        provenance=json.loads(row["provenance"] or "{}"),
    )


def reject_to_row(r: Reject) -> dict[str, Any]:
    d = asdict(r)
    d["reason"] = str(Reason(r.reason))
    return d
