"""pyarrow schemas for Sample and Reject (free-form dict fields are JSON strings), and the reject row."""
from __future__ import annotations

from dataclasses import asdict
from typing import Any

import pyarrow as pa

from polycap.schemas.reasons import Reason
from polycap.schemas.records import Reject

# Free-form dict fields (meta, models, params, provenance) are JSON strings; the rest have native arrow types.
SOURCE_TYPE = pa.struct([
    ("name", pa.string()), ("uri", pa.string()), ("kind", pa.string()), ("license", pa.string()),
    ("orig_caption", pa.string()), ("meta", pa.string()),
])
IMAGE_TYPE = pa.struct([
    ("bytes", pa.binary()), ("format", pa.string()), ("width", pa.int32()), ("height", pa.int32()),
    ("orig_format", pa.string()), ("orig_width", pa.int32()), ("orig_height", pa.int32()), ("ref", pa.string()),
])
HASHES_TYPE = pa.struct([
    ("sha256", pa.string()), ("phash", pa.string()), ("content_phash", pa.string()),
    ("content_box", pa.list_(pa.int32())), ("thumb", pa.string()), ("bordered", pa.bool_()),
    ("solid", pa.string()), ("quality", pa.int16()),
])
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


def reject_to_row(r: Reject) -> dict[str, Any]:
    d = asdict(r)
    d["reason"] = str(Reason(r.reason))
    return d
