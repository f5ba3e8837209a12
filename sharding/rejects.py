"""Write reject rows to `output_dir/rejects/<subdir>/rejects-NNNNN.parquet` (REJECT_SCHEMA), committed atomically.

`polycap run` writes one folder per split (`rejects/train/`, `rejects/val/`): writing `val` into an output
that holds `train` replaces only val's rows. `polycap translate` keeps one folder per input file."""
# Each bundle writes its rows to a hidden temp parquet and emits its path; one final step renames the
# emitted files (and only those, so a retried bundle's orphan is never counted twice) into place and then
# deletes reject files of a previous run. Empty input still commits one empty file with the schema.
# A crash before the final step leaves the previous run's files plus hidden temps; a crash inside it can
# leave old and new files side by side until the step is retried or the job rerun. The final step is
# idempotent (renames converge, deletes tolerate missing files), so a runner may retry it.
from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Iterator
from typing import Any

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import MIN_TIMESTAMP
from apache_beam.utils.windowed_value import WindowedValue

from polycap.schemas import REJECT_SCHEMA, Reject, reject_to_row
from polycap.sharding import fs
from polycap.sharding import manifest as mf
from polycap.sharding.writer import TMP_RE

log = logging.getLogger(__name__)

REJECTS_DIR = "rejects"
REJECT_FILE_RE = re.compile(r"^rejects-\d{5}\.parquet$")
MAX_ROWS_PER_FILE = 100_000   # bounds a worker's buffer; a bundle may write several files


def rejects_table(rows: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=REJECT_SCHEMA)


def write_temp(table: pa.Table, rejects_dir: str) -> str:
    path = mf.join(rejects_dir, f".part-{uuid.uuid4().hex[:8]}.parquet.tmp-{uuid.uuid4().hex}")
    with fs.create(path) as f:
        pq.write_table(table, f)
    return path


class WriteRejectsFn(beam.DoFn):
    """Buffers a bundle's rejects and writes them as one temp parquet per bundle (or per 100k rows)."""

    def __init__(self, rejects_dir: str):
        self.rejects_dir = rejects_dir
        self.rows_written = Metrics.counter("rejects", "rows_written")
        self.rows: list[dict[str, Any]] = []

    def setup(self) -> None:
        mf.ensure_dir(self.rejects_dir)

    def start_bundle(self) -> None:
        self.rows = []

    def _flush(self) -> str:
        path = write_temp(rejects_table(self.rows), self.rejects_dir)
        self.rows_written.inc(len(self.rows))
        self.rows = []
        return path

    def process(self, reject: Reject) -> Iterator[str]:
        self.rows.append(reject_to_row(reject))
        if len(self.rows) >= MAX_ROWS_PER_FILE:
            yield self._flush()

    def finish_bundle(self) -> Iterator[WindowedValue]:
        if self.rows:
            yield WindowedValue(self._flush(), MIN_TIMESTAMP, (GlobalWindow(),))


def commit_rejects(temps: list[str], rejects_dir: str) -> list[str]:
    """Rename emitted temp files to `rejects-NNNNN.parquet`, then drop older reject files and temps."""
    mf.ensure_dir(rejects_dir)
    temps = sorted(temps)
    if not temps:
        temps = [write_temp(rejects_table([]), rejects_dir)]
    finals = [mf.join(rejects_dir, f"rejects-{i:05d}.parquet") for i in range(len(temps))]
    fs.rename_converging(temps, finals)
    keep = {mf.basename(p) for p in finals}
    old = [mf.join(rejects_dir, n) for n in mf.list_files(rejects_dir)
           if (REJECT_FILE_RE.match(n) and n not in keep) or TMP_RE.match(n)]
    fs.delete(old)
    log.info("rejects: committed %d files to %s", len(finals), rejects_dir)
    return finals


class WriteRejects(beam.PTransform):
    """PCollection[Reject] -> PCollection[str] of committed parquet paths under `output_dir/rejects/`."""

    def __init__(self, output_dir: str, subdir: str = ""):
        super().__init__()
        self.rejects_dir = rejects_dir(output_dir, subdir)

    def expand(self, rejects: beam.PCollection) -> beam.PCollection:
        return (rejects
                | "WriteTempRejects" >> beam.ParDo(WriteRejectsFn(self.rejects_dir))
                | "GatherRejectFiles" >> beam.combiners.ToList()
                | "CommitRejects" >> beam.FlatMap(commit_rejects, self.rejects_dir))


def rejects_dir(output_dir: str, subdir: str = "") -> str:
    """`output_dir/rejects`, or `output_dir/rejects/<subdir>` for a job whose rejects sit beside other jobs'
    (`polycap run` keeps one folder per split, `polycap translate` one per input file)."""
    base = mf.join(mf.abs_path(output_dir), REJECTS_DIR)
    return mf.join(base, subdir) if subdir else base


def reject_files(output_dir: str, subdir: str = "") -> list[str]:
    """Committed reject files, sorted: those of `subdir`, or with no subdir every folder's (`rejects/*/`) plus
    any directly under `rejects/` (the layout before per-split folders)."""
    folder = rejects_dir(output_dir, subdir)
    names = fs.list_dir(folder, recursive=not subdir)
    return sorted(mf.join(folder, n) for n in names
                  if n.count("/") <= (0 if subdir else 1) and REJECT_FILE_RE.match(mf.basename(n)))


def read_rejects(output_dir: str, subdir: str = "") -> pa.Table:
    """Committed reject rows of one split (or input file), or with no subdir of all of them (an empty table
    with REJECT_SCHEMA when there are none)."""
    tables = [mf.read_table(p).cast(REJECT_SCHEMA) for p in reject_files(output_dir, subdir)]
    return pa.concat_tables(tables) if tables else REJECT_SCHEMA.empty_table()
