"""Summarize a shard directory: samples, shards, bytes, languages, sources and image-size quantiles."""
from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import pyarrow as pa

from polycap.sharding import manifest as mf
from polycap.sharding.members import SHARD_RE
from polycap.sharding.reader import iter_shard

QUANTILES = (0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0)


def quantiles(values: list[int] | np.ndarray) -> dict[str, float]:
    """{"p0": min, "p5": ..., "p100": max, "mean": ...}; empty input gives {}."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        return {}
    qs = np.quantile(arr, QUANTILES)
    out = {f"p{round(q * 100)}": float(v) for q, v in zip(QUANTILES, qs)}
    out["mean"] = float(arr.mean())
    return out


def stats_from_table(table: pa.Table, shard_bytes: dict[str, int]) -> dict[str, Any]:
    """Stats over manifest-shaped columns (key, split, shard, source_name, width, height, languages)."""
    per_shard = Counter(table.column("shard").to_pylist())
    langs: Counter[str] = Counter()
    for row in table.column("languages").to_pylist():
        langs.update(row or [])
    return {
        "samples": table.num_rows,
        "shards": len(shard_bytes),
        "bytes": sum(shard_bytes.values()),
        "splits": dict(sorted(Counter(table.column("split").to_pylist()).items())),
        "samples_per_shard": quantiles(list(per_shard.values())),
        "languages": dict(sorted(langs.items())),
        "sources": dict(sorted(Counter(table.column("source_name").to_pylist()).items())),
        "width": quantiles(table.column("width").to_numpy(zero_copy_only=False)),
        "height": quantiles(table.column("height").to_numpy(zero_copy_only=False)),
    }


def _table_from_tars(shards_dir: str, names: list[str]) -> pa.Table:
    """Manifest-shaped columns read from the tars' json members (for shard dirs without a manifest)."""
    rows = []
    for name in names:
        split = SHARD_RE.match(name)["split"]  # type: ignore[index]
        for s in iter_shard(mf.join(shards_dir, name)):
            image, source = s.json.get("image") or {}, s.json.get("source") or {}
            rows.append({"key": s.key, "split": split, "shard": name,
                         "source_uri": source.get("uri"), "source_name": source.get("name"),
                         "width": image.get("width"), "height": image.get("height"),
                         "languages": sorted(s.json.get("captions") or {})})
    schema = pa.schema([mf.MANIFEST_SCHEMA.field(n) for n in
                        ("key", "split", "shard", "source_uri", "source_name", "width", "height", "languages")])
    return pa.Table.from_pylist(rows, schema=schema)


def shard_stats(run_or_shard_dir: str) -> dict[str, Any]:
    """Stats from `manifest.parquet` when present (fast), else by reading every tar's json members."""
    run_dir, shards_dir = mf.resolve_dirs(mf.abs_path(run_or_shard_dir))
    files = mf.list_files(shards_dir)
    shard_bytes = {n: size for n, size in files.items() if SHARD_RE.match(n)}
    table = mf.read_manifest(run_dir)
    source = "manifest"
    if table is None:
        table, source = _table_from_tars(shards_dir, sorted(shard_bytes)), "tars"
    out = stats_from_table(table, shard_bytes)
    out["path"], out["from"] = run_dir, source
    return out
