"""Write samples into deterministic webdataset tars `{split}-{shard:06d}.tar`, committed atomically."""
# How it scales and why reruns are byte-identical:
#   1. count the samples (a side input) and pick a bucket count so a bucket holds about one shard;
#   2. bucket by key range (keys are uniform hex content addresses), so buckets follow global key order;
#   3. GroupByKey the bucket, sort its samples by key, split into chunks of at most `max_samples`, and
#      write each chunk to a hidden temp tar `.{split}-{run}-{bucket}-{chunk}.tar.tmp-<uuid>` (plus a
#      sidecar parquet with its manifest rows); tar metadata is fixed (mtime 0, uid/gid 0, mode 0644);
#   4. one final step (single worker) numbers the chunks in (bucket, chunk) order, writes the new manifest
#      to a temp name fixed by the run id, renames each temp tar to its final name, deletes this split's
#      shards beyond the new count, renames the manifest into place, and removes sidecars and temp files
#      (this run's and crashed attempts'). All file access goes through sharding/fs.py (any filesystem).
#
# What a crash leaves behind (test_sigkill_mid_run_leaves_nothing_a_reader_accepts in
# tests/sharding/test_validate.py kills a rerun mid-write):
#   * killed before step 4 (the whole write phase): the previous run's shards and manifest untouched,
#     plus hidden temp files that no reader lists; `validate` warns about them, the next run deletes them.
#     A half-written tar only ever exists under a temp name.
#   * killed inside step 4: every file with a final name is a complete tar (renames are atomic on
#     POSIX file systems; object stores copy then delete, so the final object appears only whole),
#     but new and old shards can be mixed under the old manifest; `validate` flags their sha256
#     mismatch (unless the rerun wrote identical bytes), and rerunning the job repairs it.
#   * the commit step is idempotent, so a runner may retry it: renames converge (a temp already renamed
#     is skipped), the manifest temp has the same name on every attempt, and sidecars are deleted only
#     after the manifest is in place, so a retry that finds one gone only finishes the cleanup
#     (tests/sharding/test_writer.py retries it after each partial state). Concurrent runs into the same
#     output and split are not supported.
# Buckets aim ~4 sigma below max_samples (binomial bucket sizes), so shards are ~87% full at 1000.
from __future__ import annotations

import hashlib
import io
import itertools
import json
import logging
import math
import os
import re
import tarfile
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.metrics import Metrics

from polycap.schemas import Sample
from polycap.schemas.config import ShardsConfig
from polycap.sharding import fs, record_json
from polycap.sharding import manifest as mf
from polycap.sharding.members import LANG_RE, SHARD_RE, shard_name
from polycap.sharding.staging import image_bytes

log = logging.getLogger(__name__)

STAGE = "shards"
# Keys become member names; webdataset splits a member name at its first dot
# (tests/sharding/test_writer.py rejects keys with dots).
SAFE_KEY_RE = re.compile(r"^[A-Za-z0-9_-]+$")
TMP_RE = re.compile(r"^\..+\.tmp-[0-9a-f]{32}$")


class ShardWriteError(ValueError):
    """A sample that cannot be written as a shard member (never expected after decode and dedup)."""


# ---------------------------------------------------------------- pure functions: members and tars

def sample_to_json(sample: Sample, langs: list[str] | None = None) -> dict[str, Any]:
    """The shard `json` member: one fixed schema for the run's languages (sharding/record_json.py)."""
    return record_json.sample_to_json(sample, langs)


def json_bytes(sample: Sample, langs: list[str] | None = None) -> bytes:
    try:
        text = json.dumps(sample_to_json(sample, langs), ensure_ascii=False, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ShardWriteError(f"sample {sample.key}: record is not JSON-serializable ({e})") from e
    return text.encode("utf-8")


def sample_members(sample: Sample, langs: list[str] | None = None) -> list[tuple[str, bytes]]:
    """`{key}.jpg`, `{key}.json`, `{key}.txt` (the primary caption, "" when none), then `{key}.{lang}.txt`
    (lower-case tag) for every language of the run (`langs`, default the sample's own), "" when missing."""
    key = sample.key
    if not SAFE_KEY_RE.match(key):
        raise ShardWriteError(f"key {key!r} is not a dot-free name of [A-Za-z0-9_-]")
    data = image_bytes(sample)
    if not data:
        raise ShardWriteError(f"sample {key}: no image bytes (was it decoded?)")
    all_langs = sorted(set(langs if langs is not None else sample.captions) | set(sample.captions))
    for lang in all_langs:
        if not LANG_RE.match(lang):
            raise ShardWriteError(f"sample {key}: caption language {lang!r} is not a language code")
    if len({record_json.member_lang(lang) for lang in all_langs}) != len(all_langs):
        raise ShardWriteError(f"sample {key}: languages {all_langs} differ only in case")

    def text(lang: str) -> bytes:
        cap = sample.captions.get(lang)
        return (cap.text if cap is not None else "").encode("utf-8")

    primary = record_json.primary_lang(all_langs)
    members = [(f"{key}.jpg", data), (f"{key}.json", json_bytes(sample, all_langs)),
               (f"{key}.txt", text(primary) if primary else b"")]
    for lang in all_langs:
        members.append((f"{key}.{record_json.member_lang(lang)}.txt", text(lang)))
    return members


def tar_info(name: str, size: int) -> tarfile.TarInfo:
    """Fixed metadata so that the same members always give the same bytes."""
    ti = tarfile.TarInfo(name)
    ti.size, ti.mtime, ti.mode = size, 0, 0o644
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    ti.type = tarfile.REGTYPE
    return ti


def add_members(tf: tarfile.TarFile, members: Iterable[tuple[str, bytes]]) -> None:
    """Append `(name, data)` members to an open tar, each with the fixed metadata of `tar_info`."""
    for name, data in members:
        tf.addfile(tar_info(name, len(data)), io.BytesIO(data))


class _HashingWriter:
    """File-like that forwards writes and keeps a running sha256 and byte count."""

    def __init__(self, f: Any):
        self.f, self.sha, self.size = f, hashlib.sha256(), 0

    def write(self, b: bytes) -> int:
        self.sha.update(b)
        self.size += len(b)
        self.f.write(b)
        return len(b)


def write_tar(fileobj: Any, samples: Iterable[Sample], langs: list[str] | None = None) -> tuple[str, int]:
    """Stream a tar of `samples` (already in key order) into `fileobj`; returns (sha256, bytes).
    `langs`: the run's languages (every sample gets one text member each); default each sample's own."""
    hw = _HashingWriter(fileobj)
    with tarfile.open(fileobj=hw, mode="w|", format=tarfile.PAX_FORMAT) as tf:  # type: ignore[call-overload]
        for s in samples:
            add_members(tf, sample_members(s, langs))
    return hw.sha.hexdigest(), hw.size


def _fsync(f: Any) -> None:
    """Make a local tar durable before it is renamed into place (a no-op for object stores)."""
    try:
        f.flush()
        os.fsync(f.fileno())
    except (AttributeError, OSError, io.UnsupportedOperation):
        pass


# ---------------------------------------------------------------- pure functions: bucketing

def num_buckets(n: int, max_samples: int) -> int:
    """Buckets whose mean size is ~4 sigma below `max_samples`, so a bucket nearly always fits one shard."""
    target = max(math.ceil(max_samples / 2), math.floor(max_samples - 4 * math.sqrt(max_samples)), 1)
    return max(1, math.ceil(n / target))


def bucket_of(key: str, buckets: int) -> int:
    """Range-partition the 32-bit key prefix: bucket order is global key order for hex keys."""
    try:
        prefix = int(key[:8], 16) if len(key) >= 8 else None
    except ValueError:
        prefix = None
    if prefix is None:
        prefix = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16)
    return (prefix * buckets) >> 32


def chunks(samples: list[Sample], size: int) -> Iterator[list[Sample]]:
    for i in range(0, len(samples), size):
        yield samples[i:i + size]


def sorted_unique(samples: Iterable[Sample]) -> list[Sample]:
    """Samples by key; a repeated key would merge two records into one shard sample, so it is an error."""
    out = sorted(samples, key=lambda s: s.key)
    for a, b in itertools.pairwise(out):
        if a.key == b.key:
            raise ShardWriteError(f"key {a.key} reached the shard writer twice ({a.source.uri}, "
                                  f"{b.source.uri}); exact dedup must run before sharding")
    return out


# ---------------------------------------------------------------- DoFn: write one bucket's chunks

class WriteChunksFn(beam.DoFn):
    """(bucket, samples) -> one info dict per temp tar written (sorted by key, <= max_samples each)."""

    def __init__(self, shards_dir: str, split: str, max_samples: int, run_id: str):
        self.shards_dir, self.split, self.max_samples, self.run_id = shards_dir, split, max_samples, run_id
        self.langs: list[str] | None = None
        self.samples = Metrics.counter(STAGE, "samples_written")
        self.tars = Metrics.counter(STAGE, "tars_written")
        self.sizes = Metrics.distribution(STAGE, "tar_bytes")

    def setup(self) -> None:
        mf.ensure_dir(self.shards_dir)

    def process(self, element: tuple[int, Iterable[Sample]], langs: Iterable[str] | None = None
                ) -> Iterator[dict[str, Any]]:
        bucket, samples = element
        self.langs = sorted(langs) if langs is not None else None
        for c, chunk in enumerate(chunks(sorted_unique(samples), self.max_samples)):
            yield self._write(bucket, c, chunk)

    def _write(self, bucket: int, chunk_no: int, chunk: list[Sample]) -> dict[str, Any]:
        token = uuid.uuid4().hex
        stem = f".{self.split}-{self.run_id}-{bucket:06d}-{chunk_no:04d}"
        tmp = mf.join(self.shards_dir, f"{stem}.tar.tmp-{token}")
        sidecar = mf.join(self.shards_dir, f"{stem}.parquet.tmp-{token}")
        with fs.create(tmp) as f:
            sha, size = write_tar(f, chunk, self.langs)
            _fsync(f)
        with fs.create(sidecar) as f:
            pq.write_table(pa.table(mf.sidecar_rows(chunk), schema=mf.SIDECAR_SCHEMA), f)
        self.samples.inc(len(chunk))
        self.tars.inc()
        self.sizes.update(size)
        return {"bucket": bucket, "chunk": chunk_no, "tmp": tmp, "sidecar": sidecar, "sha256": sha,
                "bytes": size, "samples": len(chunk), "first_key": chunk[0].key, "last_key": chunk[-1].key}


# ---------------------------------------------------------------- commit: one worker, after all writes

def manifest_temp(run_dir: str, split: str, run_id: str) -> str:
    """The manifest's temp name: the same on every attempt of one run's commit, different across runs."""
    token = hashlib.sha256(f"{run_id}:{split}".encode()).hexdigest()[:32]
    return mf.join(run_dir, f".{mf.MANIFEST_NAME}.tmp-{token}")


def _write_manifest(infos: list[dict[str, Any]], names: list[str], run_dir: str, split: str, tmp: str) -> None:
    """Stream kept rows of other splits and every sidecar into the temp manifest `tmp`."""
    final = mf.join(run_dir, mf.MANIFEST_NAME)
    with fs.create(tmp) as f, pq.ParquetWriter(f, mf.MANIFEST_SCHEMA) as w:
        for batch in mf.kept_rows(final, split):
            w.write_batch(batch)
        for info, name in zip(infos, names):
            sidecar = mf.read_table(info["sidecar"]).cast(mf.SIDECAR_SCHEMA)
            w.write_table(mf.shard_table(sidecar, split, name, info["sha256"], info["bytes"]))


def _stale(shards_dir: str, split: str, keep: int) -> tuple[list[str], list[str]]:
    """(this split's shards numbered >= keep, this split's leftover temp files)."""
    stale, temps = [], []
    for name in mf.list_files(shards_dir):
        m = SHARD_RE.match(name)
        if m and m["split"] == split and int(m["shard"]) >= keep:
            stale.append(mf.join(shards_dir, name))
        elif TMP_RE.match(name) and name.startswith(f".{split}-"):
            temps.append(mf.join(shards_dir, name))
    return stale, temps


def commit_shards(infos: list[dict[str, Any]], run_dir: str, shards_dir: str, split: str,
                  run_id: str = "") -> list[dict[str, Any]]:
    """Number the temp tars, write the manifest, rename into place, drop stale shards and temp files.

    Idempotent (see the module comment): a retry after any partial attempt ends in the same files."""
    infos = sorted(infos, key=lambda i: (i["bucket"], i["chunk"]))
    names = [shard_name(split, i) for i in range(len(infos))]
    mf.ensure_dir(shards_dir)
    manifest_tmp = manifest_temp(run_dir, split, run_id or uuid.uuid4().hex)
    finals = [mf.join(shards_dir, n) for n in names]
    present = mf.list_files(shards_dir)
    if all(mf.basename(i["sidecar"]) in present for i in infos):
        # Sidecars go only after the manifest is in place: all present means steps up to the manifest
        # rename may still be missing, and each of them is safe to repeat.
        _write_manifest(infos, names, run_dir, split, manifest_tmp)
        fs.rename_converging([i["tmp"] for i in infos], finals)
        stale, _ = _stale(shards_dir, split, len(infos))
        fs.delete(stale)
        fs.rename_converging([manifest_tmp], [mf.join(run_dir, mf.MANIFEST_NAME)])
    else:
        stale = []
        if fs.is_file(manifest_tmp):
            raise FileNotFoundError(f"shards: sidecars of {split} are gone but the manifest was never "
                                    f"committed ({manifest_tmp}); rerun the job")
    _, temps = _stale(shards_dir, split, len(infos))
    temps += [mf.join(run_dir, n) for n in mf.list_files(run_dir)
              if TMP_RE.match(n) and n.startswith(f".{mf.MANIFEST_NAME}.")]
    fs.delete(temps)
    log.info("shards: committed %d %s shards (%d samples) to %s, removed %d stale", len(infos), split,
             sum(i["samples"] for i in infos), shards_dir, len(stale))
    return [{"split": split, "shard": n, "path": p, "samples": i["samples"], "bytes": i["bytes"],
             "sha256": i["sha256"], "first_key": i["first_key"], "last_key": i["last_key"]}
            for n, p, i in zip(names, finals, infos)]


def _with_bucket(sample: Sample, n: int, max_samples: int) -> tuple[int, Sample]:
    return bucket_of(sample.key, num_buckets(n, max_samples)), sample


class WriteShards(beam.PTransform):
    """PCollection[Sample] -> PCollection[dict]: one info dict per committed shard (see module doc)."""

    def __init__(self, cfg: ShardsConfig, output_dir: str, langs: Iterable[str] = ()):
        """`langs`: languages every sample gets a text member for even when no sample has a caption in it
        (`polycap translate` on shards: a target language that failed everywhere is still in the layout)."""
        super().__init__()
        self.langs = sorted(set(langs))
        if not cfg.split or not re.match(r"^[A-Za-z0-9_-]+$", cfg.split):
            raise ValueError(f"shards.split: {cfg.split!r} must be a name of [A-Za-z0-9_-]")
        if cfg.max_samples <= 0:
            raise ValueError(f"shards.max_samples: must be > 0, got {cfg.max_samples}")
        self.cfg = cfg
        self.run_dir = mf.abs_path(output_dir)
        self.shards_dir = mf.join(self.run_dir, mf.SHARDS_DIR)

    def expand(self, samples: beam.PCollection) -> beam.PCollection:
        run_id = uuid.uuid4().hex[:12]   # names this run's temp files; crashed runs' leftovers differ
        count = samples | "CountSamples" >> beam.combiners.Count.Globally()
        # every language any sample of the run has: each sample gets a text member per language
        langs = (samples
                 | "CaptionLangs" >> beam.FlatMap(lambda s: list(s.captions))
                 | "UniqueLangs" >> beam.Distinct()
                 | "AllLangs" >> beam.combiners.ToList()
                 | "WithFixedLangs" >> beam.Map(lambda xs, fixed: sorted(set(xs) | set(fixed)), self.langs))
        infos = (samples
                 | "AssignBucket" >> beam.Map(_with_bucket, n=beam.pvalue.AsSingleton(count),
                                              max_samples=self.cfg.max_samples)
                 | "GroupByBucket" >> beam.GroupByKey()
                 | "WriteTempTars" >> beam.ParDo(WriteChunksFn(self.shards_dir, self.cfg.split,
                                                               self.cfg.max_samples, run_id),
                                                langs=beam.pvalue.AsSingleton(langs)))
        return (infos
                | "GatherTars" >> beam.combiners.ToList()
                | "CommitShards" >> beam.FlatMap(commit_shards, self.run_dir, self.shards_dir,
                                                 self.cfg.split, run_id))
