"""Run statistics computed inside the pipeline: partial counts merged by a combiner, written once by a worker.

The launcher never scans the outputs (manifest, reject rows) to count them: each stream is counted where it
flows, with combiner lifting (every worker pre-sums its bundles, so no key is hot and no worker holds rows),
the few resulting dicts are merged into one, and one worker writes the small JSON file through the filesystem
layer. A job submitted to a remote runner without waiting still leaves a complete file behind.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import apache_beam as beam

from polycap.sharding import fs

STATS_NAME = "_stats.json"


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
