"""The shard manifest: one parquet row per sample, with its shard's sha256, size and sample count."""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from polycap.schemas import Sample
from polycap.sharding import fs

MANIFEST_NAME = "manifest.parquet"
SHARDS_DIR = "shards"

# Per-shard facts (sha256, bytes, samples) repeat on each row of the shard: parquet dictionary-encodes
# them to almost nothing, and one file keeps samples and shards consistent under one atomic rename.
MANIFEST_SCHEMA = pa.schema([
    ("key", pa.string()),
    ("split", pa.string()),
    ("shard", pa.string()),
    ("source_uri", pa.string()),
    ("source_name", pa.string()),
    ("width", pa.int32()),
    ("height", pa.int32()),
    ("languages", pa.list_(pa.string())),
    ("shard_sha256", pa.string()),
    ("shard_bytes", pa.int64()),
    ("shard_samples", pa.int64()),
])
# Rows a writer knows before the shard's final name and digest exist (its sidecar file).
SIDECAR_SCHEMA = pa.schema([MANIFEST_SCHEMA.field(n) for n in
                            ("key", "source_uri", "source_name", "width", "height", "languages")])


# Path helpers live in the one filesystem layer (sharding/fs.py); these names stay for their callers.
abs_path = fs.abs_path
join = fs.join
basename = fs.basename
ensure_dir = fs.mkdirs


def resolve_dirs(path: str) -> tuple[str, str]:
    """(run_dir, shards_dir) for a run dir (holding `shards/`) or a shard dir (manifest in its parent)."""
    path = path.rstrip("/") or "/"
    if fs.is_file(join(path, MANIFEST_NAME)) or fs.is_dir(join(path, SHARDS_DIR)):
        return path, join(path, SHARDS_DIR)
    parent = fs.parent(path)
    if fs.is_file(join(parent, MANIFEST_NAME)):
        return parent, path
    return path, path


def list_files(directory: str) -> dict[str, int]:
    """basename -> size of the plain files directly inside `directory` (hidden ones included); a folder on
    an object store is a prefix, so this lists by prefix there."""
    return fs.list_dir(directory)


def sidecar_rows(samples: Iterable[Sample]) -> dict[str, list[Any]]:
    """Manifest columns known at write time, in sample order."""
    cols: dict[str, list[Any]] = {n: [] for n in SIDECAR_SCHEMA.names}
    for s in samples:
        cols["key"].append(s.key)
        cols["source_uri"].append(s.source.uri)
        cols["source_name"].append(s.source.name)
        cols["width"].append(s.image.width)
        cols["height"].append(s.image.height)
        cols["languages"].append(sorted(s.captions))
    return cols


def read_table(path: str) -> pa.Table:
    return fs.read_parquet(path)


def shard_table(sidecar: pa.Table, split: str, shard: str, sha256: str, size: int) -> pa.Table:
    """Complete a writer's sidecar into manifest rows for its committed shard."""
    n = sidecar.num_rows
    extra = {"split": [split] * n, "shard": [shard] * n, "shard_sha256": [sha256] * n,
             "shard_bytes": [size] * n, "shard_samples": [n] * n}
    cols = [sidecar.column(name) if name in SIDECAR_SCHEMA.names else pa.array(extra[name], f.type)
            for name, f in zip(MANIFEST_SCHEMA.names, MANIFEST_SCHEMA)]
    return pa.Table.from_arrays(cols, schema=MANIFEST_SCHEMA)


def kept_rows(old_manifest: str, split: str) -> Iterable[pa.RecordBatch]:
    """Rows of other splits from an existing manifest (a run dir may hold train and val shards)."""
    if not fs.is_file(old_manifest):
        return
    if fs.parquet_schema(old_manifest).names != MANIFEST_SCHEMA.names:
        return
    for batch in fs.iter_parquet(old_manifest, batch_size=65536):
        kept = batch.filter(pc.not_equal(batch.column("split"), split))
        if kept.num_rows:
            yield kept.cast(MANIFEST_SCHEMA)


def read_manifest(path: str) -> pa.Table | None:
    """The manifest of a run dir or shard dir, or None when there is none."""
    run_dir, _ = resolve_dirs(path)
    mpath = join(run_dir, MANIFEST_NAME)
    return read_table(mpath) if fs.is_file(mpath) else None


def shards_of(manifest: pa.Table) -> dict[str, dict[str, Any]]:
    """shard name -> {split, sha256, bytes, samples (recorded count), keys (in row order)}."""
    out: dict[str, dict[str, Any]] = {}
    cols = manifest.select(["key", "split", "shard", "shard_sha256", "shard_bytes", "shard_samples"])
    for row in cols.to_pylist():
        info = out.setdefault(row["shard"], {
            "split": row["split"], "sha256": row["shard_sha256"], "bytes": row["shard_bytes"],
            "samples": row["shard_samples"], "keys": [], "conflicts": set()})
        info["keys"].append(row["key"])
        for name, col in (("sha256", "shard_sha256"), ("bytes", "shard_bytes"), ("samples", "shard_samples")):
            if info[name] != row[col]:
                info["conflicts"].add(name)
    return out
