"""Commit a run made in waves: each finished wave's shards, manifest rows and reject files (committed by its
own pipeline under `<out>/_waves/<split>/w<NNNNNN>/`) become one shard set numbered in wave order, one
manifest and one `rejects/<split>/`, as a single run leaves them; their stats are summed."""
# Idempotent like sharding/writer.commit_shards: the plan (which file goes where) is written once, before
# any rename, to `<waves>/commit.json`; a retry reuses it. Renames converge (a pair already renamed is
# skipped), the manifest is written to a fixed temp name and renamed last among the shard steps, and the
# wave folders are deleted only after the stats are written. A crash leaves either the previous output
# (plus the waves, which a rerun commits again) or new shards under the old manifest, which `validate` flags
# and a rerun repairs.
from __future__ import annotations

import hashlib
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from polycap.sharding import fs
from polycap.sharding import manifest as mf
from polycap.sharding.members import SHARD_RE, shard_name
from polycap.sharding.rejects import REJECT_FILE_RE, rejects_dir
from polycap.sharding.run_stats import sum_stats
from polycap.sharding.writer import TMP_RE

PLAN_NAME = "commit.json"


def wave_shards(wave_dir: str, split: str) -> list[str]:
    """The shard names a finished wave committed, in order (from its manifest, which outlives the renames)."""
    path = fs.join(wave_dir, mf.MANIFEST_NAME)
    if not fs.is_file(path):
        return []
    names = set(fs.read_parquet(path, columns=["shard"]).column("shard").to_pylist())
    return sorted(n for n in names if (m := SHARD_RE.match(n)) and m["split"] == split)


def plan(out: str, split: str, wave_dirs: list[str]) -> dict[str, Any]:
    """Where each wave's shards and reject files go: shards numbered on from wave to wave, reject files too."""
    shards: list[list[str]] = []
    rejects: list[list[str]] = []
    empty: list[str] = []
    for w in wave_dirs:
        for name in wave_shards(w, split):
            shards.append([w, name, shard_name(split, len(shards))])
        wrej = rejects_dir(w, split)
        for name in sorted(n for n in mf.list_files(wrej) if REJECT_FILE_RE.match(n)):
            path = fs.join(wrej, name)
            if fs.parquet_rows(path):
                rejects.append([path, f"rejects-{len(rejects):05d}.parquet"])
            else:                      # a wave without rejects commits an empty file; one run keeps one at most
                empty.append(path)
    if not rejects and empty:
        rejects.append([empty[0], "rejects-00000.parquet"])
    return {"shards": shards, "rejects": rejects, "waves": wave_dirs}


def _write_manifest(out: str, split: str, p: dict[str, Any], tmp: str) -> None:
    final = fs.join(out, mf.MANIFEST_NAME)
    rename = {(w, old): new for w, old, new in p["shards"]}
    with fs.create(tmp) as f, pq.ParquetWriter(f, mf.MANIFEST_SCHEMA) as writer:
        for batch in mf.kept_rows(final, split):
            writer.write_batch(batch)
        for w in p["waves"]:
            path = fs.join(w, mf.MANIFEST_NAME)
            if not fs.is_file(path):
                continue
            for batch in fs.iter_parquet(path, batch_size=65536):
                batch = batch.filter(pc.equal(batch.column("split"), split)).cast(mf.MANIFEST_SCHEMA)
                names = [rename[(w, n)] for n in batch.column("shard").to_pylist()]
                i = mf.MANIFEST_SCHEMA.get_field_index("shard")
                writer.write_batch(batch.set_column(i, "shard", pa.array(names, pa.string())))


def commit_waves(out: str, split: str, waves_dir: str, wave_dirs: list[str]) -> dict[str, int]:
    """Move the finished waves into `out` (see the module comment); returns shard and reject file counts."""
    plan_path = fs.join(waves_dir, PLAN_NAME)
    if fs.is_file(plan_path):
        p = fs.read_json(plan_path)
    else:
        p = plan(out, split, wave_dirs)
        fs.write_json(plan_path, p)
    shards_dir = fs.join(out, mf.SHARDS_DIR)
    mf.ensure_dir(shards_dir)
    token = hashlib.sha256(f"waves:{split}:{waves_dir}".encode()).hexdigest()[:32]
    manifest_tmp = fs.join(out, f".{mf.MANIFEST_NAME}.tmp-{token}")
    if not fs.is_file(manifest_tmp):
        staged = fs.temp_name(manifest_tmp)    # the fixed name appears only complete
        _write_manifest(out, split, p, staged)
        fs.rename([staged], [manifest_tmp])
    fs.rename_converging([fs.join(w, mf.SHARDS_DIR, old) for w, old, _ in p["shards"]],
                         [fs.join(shards_dir, new) for _, _, new in p["shards"]])
    n = len(p["shards"])
    fs.delete([fs.join(shards_dir, name) for name in mf.list_files(shards_dir)
               if ((m := SHARD_RE.match(name)) and m["split"] == split and int(m["shard"]) >= n)
               or (TMP_RE.match(name) and name.startswith(f".{split}-"))])
    fs.rename_converging([manifest_tmp], [fs.join(out, mf.MANIFEST_NAME)])
    rdir = rejects_dir(out, split)
    mf.ensure_dir(rdir)
    fs.rename_converging([src for src, _ in p["rejects"]], [fs.join(rdir, dst) for _, dst in p["rejects"]])
    keep = {dst for _, dst in p["rejects"]}
    fs.delete([fs.join(rdir, name) for name in mf.list_files(rdir)
               if (REJECT_FILE_RE.match(name) and name not in keep) or TMP_RE.match(name)])
    return {"shards": n, "reject_files": len(p["rejects"])}


def merge_stats(per_wave: list[dict[str, Any]]) -> dict[str, Any]:
    """One run's `_stats/<split>.json` from its waves': the last wave's fields, counts summed
    (run_stats.sum_stats), `balanced` and `seconds` over the whole run."""
    out: dict[str, Any] = {**(per_wave[-1] if per_wave else {}), **sum_stats(per_wave)}
    out["balanced"] = out["inputs"] == out["kept"] + out["rejected"]
    out["seconds"] = round(sum(float(s.get("seconds") or 0) for s in per_wave), 2)
    return out
