"""Shared fixtures: where the real evaluation data lives, and tiny sample builders."""
from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EVAL_DIR = Path(os.environ.get("POLYCAP_EVAL_DIR", REPO.parent / "shared" / "eval"))


@pytest.fixture(scope="session")
def eval_dir() -> Path:
    """`../shared/eval` (real photos, OCR pages, texts, shards). CI has it beside the clone."""
    if not EVAL_DIR.is_dir():
        raise RuntimeError(f"evaluation data not found at {EVAL_DIR}; set POLYCAP_EVAL_DIR")
    return EVAL_DIR


def jpeg_bytes(w: int = 128, h: int = 96, color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (w, h), color).save(buf, format="JPEG")
    return buf.getvalue()


def make_sample(data: bytes, uri: str = "mem://x", kind: str = "dir", name: str = "test", **source_kw):
    """A freshly ingested Sample (raw bytes, not yet decoded)."""
    from polycap.schemas import Hashes, ImageInfo, Sample, Source

    sha = hashlib.sha256(data).hexdigest()
    return Sample(key=sha[:32], source=Source(name=name, uri=uri, kind=kind, **source_kw),
                  image=ImageInfo(bytes=data), hashes=Hashes(sha256=sha))
