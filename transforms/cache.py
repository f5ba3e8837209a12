"""Content-addressed result cache on the output filesystem (local, gs://, s3:// via Beam FileSystems).

One small JSON file per entry under `<root>/<k[:2]>/<k>.json`, written to a temp name then renamed, so
a crash never leaves a half entry that a rerun would trust.
"""
from __future__ import annotations

import hashlib
import json
import uuid
from typing import Any

from apache_beam.io.filesystems import FileSystems


def cache_key(*parts: Any) -> str:
    """sha256 over the canonical JSON of `parts` (dicts sorted), e.g. (image_sha, backend, model, ...)."""
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class ResultCache:
    def __init__(self, root: str):
        self.root = root.rstrip("/")

    def _path(self, key: str) -> str:
        return FileSystems.join(self.root, key[:2], f"{key}.json")

    def get(self, key: str) -> dict[str, Any] | None:
        path = self._path(key)
        if not FileSystems.exists(path):
            return None
        try:
            with FileSystems.open(path) as f:
                return json.loads(f.read().decode("utf-8"))
        except (OSError, ValueError):
            return None  # unreadable entry: treat as a miss, it will be recomputed and rewritten

    def put(self, key: str, value: dict[str, Any]) -> None:
        path = self._path(key)
        tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
        parent = FileSystems.join(self.root, key[:2])
        if not FileSystems.exists(parent):
            try:
                FileSystems.mkdirs(parent)
            except OSError:
                pass  # created concurrently by another worker
        with FileSystems.create(tmp) as f:
            f.write(json.dumps(value, ensure_ascii=False, sort_keys=True).encode("utf-8"))
        FileSystems.rename([tmp], [path])
