"""Content-addressed result cache on the output filesystem (local, gs://, s3:// through sharding/fs.py).

One small JSON file per entry under `<root>/<k[:2]>/<k>.json`, written atomically (temp + rename on a
disk, one PUT on an object store), so a crash never leaves a half entry that a rerun would trust.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any

from polycap.sharding import fs


def cache_key(*parts: Any) -> str:
    """sha256 over the canonical JSON of `parts` (dicts sorted), e.g. (image_sha, backend, model, ...)."""
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class ResultCache:
    def __init__(self, root: str):
        self.root = root.rstrip("/")

    def _path(self, key: str) -> str:
        return fs.join(self.root, key[:2], f"{key}.json")

    def get(self, key: str) -> dict[str, Any] | None:
        try:
            return fs.read_json(self._path(key))   # one read; a missing entry is an OSError like any other
        except (OSError, ValueError):
            return None  # missing or unreadable entry: a miss, recomputed and rewritten

    def put(self, key: str, value: dict[str, Any]) -> None:
        fs.write_bytes(self._path(key), json.dumps(value, ensure_ascii=False, sort_keys=True).encode("utf-8"))
