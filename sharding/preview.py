"""`polycap shards preview DIR`: the first samples of a shard set, as short readable lines."""
from __future__ import annotations

from itertools import islice
from typing import Any

from polycap.sharding.reader import iter_samples


def _short(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def preview(path: str, n: int = 5, width: int = 100) -> list[dict[str, Any]]:
    """Key, shard, size, source, OCR line count and every caption (shortened) of the first `n` samples."""
    rows = []
    for s in islice(iter_samples(path), n):
        img = s.json.get("image", {})
        ocr = s.json.get("ocr") or {}
        rows.append({
            "key": s.key, "shard": s.shard, "size": f"{img.get('width')}x{img.get('height')}",
            "source": s.json.get("source", {}).get("uri", ""), "ocr_lines": len(ocr.get("lines") or []),
            "captions": {lang: _short(t, width) for lang, t in sorted(s.texts.items()) if t.strip()},
            "conversations": sorted((s.json.get("conversations") or {}).keys()),
        })
    return rows
