"""Sample and Reject dataclasses: the one record that flows through every stage, and its reject row."""
from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from typing import Any

from polycap.schemas.reasons import Reason

# Bump on any change to the dataclasses below or to schemas/arrow.py.
SCHEMA_VERSION = "2.0.0"   # 1.1.0: ImageInfo.ref (staged image bytes); 1.2.0: near-dup signature in Hashes
# 2.0.0: the shard json has one fixed schema (sharding/record_json.py, schemas/shard_sample.schema.json)


def now_iso() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Source:
    name: str                      # the `name` of the config source
    uri: str                       # file path, URL, `tar://shard.tar#member`, ...
    kind: str                      # dir | urls | webdataset | llava
    license: str | None = None
    orig_caption: str | None = None  # alt-text / .txt caption that came with the image
    meta: dict[str, Any] = field(default_factory=dict)  # JSON-able extras (e.g. source json, LLaVA record)


@dataclass(frozen=True)
class ImageInfo:
    bytes: bytes                   # raw bytes at ingest; normalized encoding after decode
    format: str = ""               # "" until decoded; then e.g. "jpeg"
    width: int = 0
    height: int = 0
    orig_format: str = ""          # PIL format of the input (JPEG, PNG, TIFF, ...)
    orig_width: int = 0
    orig_height: int = 0
    ref: str = ""                  # where the bytes are while staged out of the record (sharding/staging.py)


@dataclass(frozen=True)
class Hashes:
    sha256: str                    # of the input bytes (the content address)
    phash: str | None = None       # 64-bit perceptual hash of the whole decoded image, 16 hex chars
    # near-dup signature (transforms/signature.py), of the content box: the image minus flat borders
    content_phash: str | None = None   # pHash of the content box, 16 hex chars
    content_box: list[int] = field(default_factory=list)  # [x0, y0, x1, y1] in the original image's pixels
    thumb: str = ""                # 32x32 gray thumbnail of the content box, base64 of 1024 row-major bytes
    bordered: bool = False         # flat bands (an added border, letterbox bars, margins) were peeled off
    solid: str = ""                # "rrggbb" (4-bit steps) when the whole image is one flat colour, else ""
    quality: int = 0               # input encoding quality: 100 lossless, JPEG estimate, 75 other lossy; 0 unknown


@dataclass(frozen=True)
class OcrLine:
    text: str
    box: list[int]                 # axis-aligned [x1, y1, x2, y2] on the 0..1000 grid (Qwen-VL)
    quad: list[int]                # 4-point polygon [x1, y1, ..., x4, y4] on the same grid
    score: float


@dataclass(frozen=True)
class OcrResult:
    engine: str                    # e.g. "paddleocr 3.7.0 (onnxruntime)"
    models: dict[str, str] = field(default_factory=dict)   # role -> model name/version
    status: str = "ok"             # ok | failed | empty | unsupported_script (Reason.OCR_UNSUPPORTED_SCRIPT)
    lines: list[OcrLine] = field(default_factory=list)      # in reading order
    lang: str | None = None        # dominant language/script of the text
    text_area_ratio: float = 0.0
    error: str | None = None


@dataclass(frozen=True)
class Caption:
    text: str
    kind: str                      # dense | source | translation
    backend: str = ""              # vllm | openai | local | source | test
    model: str = ""
    prompt_id: str = ""
    prompt_sha256: str = ""
    translated_from: str | None = None  # source language when kind == translation
    params: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    quality: str = ""              # "smoke" for tiny/offline models, else ""


@dataclass(frozen=True)
class Sample:
    key: str                       # sha256(image bytes)[:32], dot-free
    source: Source
    image: ImageInfo
    hashes: Hashes
    ocr: OcrResult | None = None
    captions: dict[str, Caption] = field(default_factory=dict)        # lang -> caption
    conversations: dict[str, list[dict[str, str]]] = field(default_factory=dict)  # lang -> [{from, value}]
    provenance: dict[str, dict[str, Any]] = field(default_factory=dict)  # stage -> {...}


@dataclass(frozen=True)
class Reject:
    key: str
    source_uri: str
    stage: str
    reason: Reason
    detail: str = ""
    time: str = field(default_factory=now_iso)
    source_name: str = ""
