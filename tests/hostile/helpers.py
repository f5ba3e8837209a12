"""Build hostile inputs and run them: `polycap run` in a subprocess (bounded by a timeout, its peak RSS read
back), or ReadSource in process when only ingest's outcome matters."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline

from polycap.schemas import Reject, Sample
from polycap.schemas.config import IngestConfig, SourceConfig
from polycap.transforms.ingest import ReadSource

REPO = Path(__file__).resolve().parents[2]

# runs `polycap run` in this (child) process and prints its own peak RSS: RUSAGE_CHILDREN of the test process
# would also hold every earlier child's peak
_RUN = """
import json, sys
from polycap.pipelines.cli import main
sys.argv = ["polycap", "run", sys.argv[1]]
try:
    main()
except SystemExit as e:
    code = e.code or 0
else:
    code = 0
# VmHWM is this process image's own peak; ru_maxrss would keep the peak of the (large) pytest process that
# forked it, since Linux carries it across exec
peak_kb = next(int(ln.split()[1]) for ln in open("/proc/self/status") if ln.startswith("VmHWM:"))
print("@@" + json.dumps({"rc": code, "maxrss_mb": peak_kb / 1024}))
"""


def tree(root: Path, skip: Path | None = None) -> set[str]:
    """Every path under `root` (files, links, folders), except those under `skip`."""
    return {str(p.relative_to(root)) for p in root.rglob("*") if skip is None or skip not in (p, *p.parents)}


def run_job(work: Path, sources: list[dict], timeout: float = 60, **sections) -> dict:
    """`polycap run` on `sources` with output `work/out`, from an empty working folder; returns the stats plus
    `rc`, `maxrss_mb`, `rejects` (rows) and `written_outside` (paths that appeared under `work` outside out/)."""
    out, cwd = work / "out", work / "cwd"
    cwd.mkdir(exist_ok=True)
    cfg = work / "job.json"
    cfg.write_text(json.dumps({"sources": sources, "output": str(out), "shards": {"split": "train"}, **sections}))
    before = tree(work)
    res = subprocess.run([sys.executable, "-c", _RUN, str(cfg)], capture_output=True, text=True, cwd=cwd,
                         timeout=timeout)
    tail = next((ln for ln in reversed(res.stdout.splitlines()) if ln.startswith("@@")), None)
    assert tail, f"no result line; rc={res.returncode}\n{res.stderr[-3000:]}"
    result = json.loads(tail[2:])
    stats_file = out / "_stats" / "train.json"
    stats = json.loads(stats_file.read_text()) if stats_file.exists() else {}
    from polycap.sharding.rejects import read_rejects
    rejects = read_rejects(str(out)).to_pylist() if stats else []
    written = sorted(tree(work, skip=out) - before - {"out"})
    return {**stats, **result, "rejects": rejects, "written_outside": written, "stderr": res.stderr[-3000:]}


_SINK: list = []


class _Collect(beam.DoFn):
    def __init__(self, tag: str):
        self.tag = tag

    def process(self, x):
        _SINK.append((self.tag, x))


def read_source(src: SourceConfig, cfg: IngestConfig | None = None) -> tuple[list[Sample], list[Reject]]:
    """ReadSource on the in-process DirectRunner; both outputs collected."""
    _SINK.clear()
    with TestPipeline(options=PipelineOptions([])) as p:
        samples, rejects = p | ReadSource(src, cfg or IngestConfig())
        samples | "CS" >> beam.ParDo(_Collect("s"))
        rejects | "CR" >> beam.ParDo(_Collect("r"))
    return [x for t, x in _SINK if t == "s"], [x for t, x in _SINK if t == "r"]
