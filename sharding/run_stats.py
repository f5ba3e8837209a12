"""Run statistics computed inside the pipeline: partial counts merged by a combiner, written once by a worker.

The launcher never scans the outputs (manifest, reject rows) to count them: each stream is counted where it
flows, with combiner lifting (every worker pre-sums its bundles, so no key is hot and no worker holds rows),
the few resulting dicts are merged into one, and one worker writes the small JSON file through the filesystem
layer. A job submitted to a remote runner without waiting still leaves a complete file behind.

`polycap run` writes one file per split, `<output>/_stats/<split>.json`, so writing `val` into an output that
holds `train` keeps train's counts; `read_stats` reads one split or merges them all. (`polycap translate`
writes `<output>/_stats.json`.)
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import apache_beam as beam

from polycap.sharding import fs

STATS_NAME = "_stats.json"     # polycap translate; and polycap run's single file before per-split stats
STATS_DIR = "_stats"


class MergeCounts(beam.CombineFn):
    """dicts of name -> int, summed per name (all accumulators are small: names, not rows)."""

    def create_accumulator(self) -> dict[str, int]:
        return {}

    def add_input(self, acc: dict[str, int], counts: dict[str, int]) -> dict[str, int]:
        for k, v in counts.items():
            acc[k] = acc.get(k, 0) + int(v)
        return acc

    def merge_accumulators(self, accs: Iterable[dict[str, int]]) -> dict[str, int]:
        out: dict[str, int] = {}
        for acc in accs:
            self.add_input(out, acc)
        return out

    def extract_output(self, acc: dict[str, int]) -> dict[str, int]:
        return dict(sorted(acc.items()))


class CountAll(beam.PTransform):
    """PCollection[T] -> exactly one dict: the sum of `fn(element)` over all elements ({} when empty)."""

    def __init__(self, fn: Callable[[Any], dict[str, int]]):
        super().__init__()
        self.fn = fn

    def expand(self, pcoll: beam.PCollection) -> beam.PCollection:
        return pcoll | "Partial" >> beam.Map(self.fn) | "Sum" >> beam.CombineGlobally(MergeCounts())


class WriteJson(beam.DoFn):
    """counts -> `build(counts)` written atomically to `path` (one element in, one file out); yields it."""

    def __init__(self, path: str, build: Callable[[dict[str, int]], dict[str, Any]]):
        self.path, self.build = path, build

    def process(self, counts: dict[str, int]):
        data = self.build(counts)
        fs.write_json(self.path, data)
        yield data


def count_key(prefix: str, counts: dict[str, int]) -> dict[str, int]:
    """The `prefix:<name>` entries of a counts dict, as name -> n, sorted by name."""
    p = f"{prefix}:"
    return {k[len(p):]: v for k, v in sorted(counts.items()) if k.startswith(p)}


def stats_path(output_dir: str, split: str) -> str:
    """`<output>/_stats/<split>.json`: one split's counts (`polycap run`)."""
    return fs.join(fs.abs_path(output_dir), STATS_DIR, f"{split}.json")


def split_stats(output_dir: str) -> dict[str, dict[str, Any]]:
    """split -> its `_stats/<split>.json`; a file that does not parse is left out."""
    folder = fs.join(fs.abs_path(output_dir), STATS_DIR)
    out: dict[str, dict[str, Any]] = {}
    for name in sorted(fs.list_dir(folder)):
        if name.endswith(".json") and not name.startswith("."):
            try:
                out[name[: -len(".json")]] = fs.read_json(fs.join(folder, name))
            except (OSError, ValueError):
                continue
    return out


_SUMMED = ("inputs", "kept", "rejected", "shards")
_MERGED = ("rejected_by_stage", "rejected_by_reason", "kept_by_language")


def sum_stats(stats: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts of several stats dicts (splits, or the waves of one run) summed, and their by-stage, by-reason
    and by-language counts merged."""
    merged: dict[str, Any] = {k: sum(int(s.get(k) or 0) for s in stats) for k in _SUMMED}
    for k in _MERGED:
        acc: dict[str, int] = {}
        for s in stats:
            for name, n in (s.get(k) or {}).items():
                acc[name] = acc.get(name, 0) + int(n)
        merged[k] = dict(sorted(acc.items()))
    return merged


def read_stats(output_dir: str, split: str | None = None) -> dict[str, Any]:
    """One split's stats, or with no split every split's merged: counts summed, `balanced` when each split
    balances, `splits` holding each one. Falls back to the old single `_stats.json`; {} when there is none."""
    if split is not None:
        path = stats_path(output_dir, split)
        return fs.read_json(path) if fs.is_file(path) else {}
    per = split_stats(output_dir)
    if not per:
        legacy = fs.join(fs.abs_path(output_dir), STATS_NAME)
        return fs.read_json(legacy) if fs.is_file(legacy) else {}
    if len(per) == 1:
        only = next(iter(per))
        return {**per[only], "splits": per}
    merged = sum_stats(list(per.values()))
    merged["balanced"] = all(s.get("balanced") for s in per.values())
    merged["notes"] = list(dict.fromkeys(n for s in per.values() for n in s.get("notes") or []))
    merged["schema_version"] = max(str(s.get("schema_version") or "") for s in per.values())
    merged["splits"] = per
    return merged
