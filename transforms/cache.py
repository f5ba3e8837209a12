"""Content-addressed result cache on the output filesystem (local, gs://, s3:// through sharding/fs.py).

One small JSON file per entry under `<root>/<k[:2]>/<k>.json`, written atomically (temp + rename on a
disk, one PUT on an object store), so a crash never leaves a half entry that a rerun would trust.

On a local disk entries go through `os` directly (one open per lookup, temp + `os.replace` per write, no
fsync): a per-entry round through the filesystem layer and an fsync cost more than the model call against
a fast server. An entry a crash left empty or cut short does not parse, and an unreadable entry is a miss,
recomputed and rewritten, so durability buys nothing here.
"""
from __future__ import annotations

import hashlib
import json
import os
import uuid
from typing import Any

from polycap.sharding import fs


def cache_key(*parts: Any) -> str:
    """sha256 over the canonical JSON of `parts` (dicts sorted), e.g. (image_sha, backend, model, ...)."""
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class ResultCache:
    def __init__(self, root: str):
        self.root = root.rstrip("/")
        self._local = fs.local_path(self.root)
        self._made: set[str] = set()   # local subfolders known to exist

    def _path(self, key: str) -> str:
        return fs.join(self.root, key[:2], f"{key}.json")

    def get(self, key: str) -> dict[str, Any] | None:
        try:
            if self._local is not None:
                with open(os.path.join(self._local, key[:2], f"{key}.json"), "rb") as f:
                    return json.loads(f.read())
            return fs.read_json(self._path(key))   # one read; a missing entry is an OSError like any other
        except (OSError, ValueError):
            return None  # missing or unreadable entry: a miss, recomputed and rewritten

    def put(self, key: str, value: dict[str, Any]) -> None:
        data = json.dumps(value, ensure_ascii=False, sort_keys=True).encode("utf-8")
        if self._local is None:
            fs.write_bytes(self._path(key), data)
            return
        folder = os.path.join(self._local, key[:2])
        if folder not in self._made:
            os.makedirs(folder, exist_ok=True)
            self._made.add(folder)
        path = os.path.join(folder, f"{key}.json")
        tmp = os.path.join(folder, f".{key}.json.tmp-{uuid.uuid4().hex}")   # fs.temp_name's pattern
        try:
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
