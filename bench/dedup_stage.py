"""Dedup stage alone: the same decoded samples through DedupImages, CPU and wall seconds, before/after a change.

Run: `.venv/bin/python -m bench.dedup_stage LABEL [OUT] [PIPELINE_JSON]` -> OUT (default
bench/results/dedup_stage.json), whose LABEL entry this run replaces; run it from a worktree of the older
commit with OUT pointing here to record `before` (the script only calls decode_sample and DedupImages, which
both versions have). `--help` for the options: `--samples PKL` decodes the inputs once into a pickle and reads
them from it after (so two versions timed in turn as whole processes read the same samples and skip the
decode), `--repeats`, `--no-floor`, `--dry-run` (print the entry, write nothing).
Inputs: bench/pipeline.py's 1000 seeded JPEG variants of the eval photos (2 % exact copies), decoded once,
bytes dropped as staging drops them; each repeat runs the in-memory DirectRunner on Create(indices) -> the
samples (from this process's memory: beam.Create of the samples themselves would time pickling + bz2 of the
graph) -> DedupImages -> counts, and the same graph with an identity step instead of dedup (`floor`: Beam's
own cost of moving these samples). PIPELINE_JSON: a bench/pipeline.py result of the same commit to summarize
alongside (the whole job).
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import apache_beam as beam

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.pipeline import make_input
from polycap.schemas import Sample
from polycap.schemas.config import DecodeConfig, DedupConfig
from polycap.transforms import neardup
from polycap.transforms.decode import decode_sample
from polycap.transforms.dedup import DedupImages
from tests.conftest import make_sample


def decoded_inputs(n: int) -> list[Sample]:
    work = Path(tempfile.mkdtemp(prefix="polycap-dedup-"))
    try:
        make_input(work / "in", n)
        out = []
        for p in sorted((work / "in").iterdir()):
            s = decode_sample(make_sample(p.read_bytes(), uri=p.name), DecodeConfig())
            if isinstance(s, Sample):
                out.append(replace(s, image=replace(s.image, bytes=b"")))
        return out
    finally:
        shutil.rmtree(work, ignore_errors=True)


_SAMPLES: list[Sample] = []


def sample_at(i: int) -> Sample:
    return _SAMPLES[i]


def run(samples: list[Sample], dedup: bool) -> tuple[float, float, int]:
    _SAMPLES[:] = samples
    # each repeat as a job's first graph: the plain-int pair budget (neardup.PLAIN_PAIRS, ~108k pairs a run
    # here) is per process, and a third repeat would otherwise pay numba's import (older commits lack it)
    if hasattr(neardup, "_plain_pairs_done"):
        neardup._plain_pairs_done = 0
    c0, w0 = time.process_time(), time.perf_counter()
    with beam.Pipeline() as p:
        s = p | beam.Create(range(len(samples))) | "Load" >> beam.Map(sample_at)
        if dedup:
            kept, rej = s | DedupImages(DedupConfig())
            (kept | "CK" >> beam.combiners.Count.Globally() | "PK" >> beam.Map(lambda n: print("kept", n)))
            (rej | "CR" >> beam.combiners.Count.Globally() | "PR" >> beam.Map(lambda n: print("rejected", n)))
        else:
            (s | "Same" >> beam.Map(lambda x: x) | "CN" >> beam.combiners.Count.Globally()
             | "PN" >> beam.Map(lambda n: print("n", n)))
    return time.process_time() - c0, time.perf_counter() - w0, len(samples)


def load_inputs(n: int, cache: Path | None) -> list[Sample]:
    """`decoded_inputs(n)`, or the samples pickled at `cache` (written there on first use)."""
    if cache is not None and cache.exists():
        samples = pickle.loads(cache.read_bytes())
        if len(samples) == n:
            return samples
    samples = decoded_inputs(n)
    if cache is not None:
        cache.write_bytes(pickle.dumps(samples))
    return samples


def main(label: str, out: Path, pipeline_json: Path | None, n: int = 1000, repeats: int = 3,
         cache: Path | None = None, floor_runs: bool = True, record: bool = True) -> dict:
    samples = load_inputs(n, cache)
    runs = [run(samples, True) for _ in range(repeats)]
    floors = [run(samples, False) for _ in range(repeats)] if floor_runs else []
    best = min(runs)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                            text=True).stdout.strip()
    entry = {"commit": commit, "samples": len(samples), "repeats": repeats,
             "dedup_cpu_s_best": round(best[0], 2), "dedup_wall_s_best": round(min(r[1] for r in runs), 2)}
    if floors:
        floor = min(floors)
        entry.update({"floor_cpu_s_best": round(floor[0], 2), "floor_wall_s_best": round(min(r[1] for r in floors), 2),
                      "dedup_minus_floor_cpu_s": round(best[0] - floor[0], 2)})
    entry.update({"samples_per_cpu_s": round(len(samples) / best[0], 1),
                  "load_avg_1m_after": round(os.getloadavg()[0], 2)})
    if pipeline_json:
        pj = json.loads(pipeline_json.read_text())
        entry["pipeline"] = {m: {"cpu_s": sorted(r["cpu_s"] for r in pj["runs"] if r["mode"] == m),
                                 "wall_s": sorted(r["wall_s"] for r in pj["runs"] if r["mode"] == m),
                                 "kept": pj["runs"][0]["kept"], "rejected": pj["runs"][0]["rejected_by_reason"]}
                             for m in pj["img_per_s_by_mode"]}
        entry["pipeline"]["shards_identical_across_runs_and_modes"] = pj["shards_identical_across_runs_and_modes"]
    if record:
        result = json.loads(out.read_text()) if out.exists() else {}
        result[label] = entry
        out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(entry, indent=1))
    return entry


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.dedup_stage", description=__doc__.split("\n")[0])
    ap.add_argument("label", help="the entry of OUT this run replaces")
    ap.add_argument("out", nargs="?", type=Path, default=REPO / "bench" / "results" / "dedup_stage.json")
    ap.add_argument("pipeline_json", nargs="?", type=Path, default=None,
                    help="a bench/pipeline.py result of the same commit to summarize alongside")
    ap.add_argument("--n", type=int, default=1000, help="input photos (default 1000)")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each graph; the best is reported (default 3)")
    ap.add_argument("--samples", type=Path, default=None,
                    help="pickle of the decoded inputs: written if missing, read if present")
    ap.add_argument("--no-floor", action="store_true", help="skip the identity-step graph")
    ap.add_argument("--dry-run", action="store_true", help="print the entry, write nothing")
    return ap.parse_args(argv)


if __name__ == "__main__":
    # through the module, not __main__: Beam pickles __main__'s functions by value with the globals they
    # read, which would put every sample into the pipeline graph
    from bench import dedup_stage

    a = parse_args(sys.argv[1:])
    dedup_stage.main(a.label, a.out, a.pipeline_json, a.n, a.repeats, a.samples, not a.no_floor, not a.dry_run)
