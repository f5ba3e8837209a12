"""Throughput of the main job, dir -> decode -> filter -> dedup -> shards, on real photos (DESIGN.md budget).

Target (DESIGN.md "Performance budget"): >= 0.75x the two-process floor of 178 img/s measured for the bare
per-image work on this 2-core machine, i.e. >= 133 img/s. Writes bench/results/pipeline.json.
"""
from __future__ import annotations

import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EVAL = REPO.parent / "shared" / "eval" / "photos"
FLOOR_2PROC = 178.0


def make_input(dest: Path, n: int) -> int:
    """n distinct files made from the real photos (a trailing byte changes the content address)."""
    photos = sorted(p for p in EVAL.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png")
                    and "edge_formats" not in p.parts)
    dest.mkdir(parents=True)
    for i in range(n):
        p = photos[i % len(photos)]
        (dest / f"{i:05d}_{p.name}").write_bytes(p.read_bytes() + i.to_bytes(4, "big"))
    return n


def run_once(src: Path, out: Path, beam_args: list[str]) -> dict:
    cfg = out.parent / f"{out.name}.yaml"
    cfg.write_text(json.dumps({"sources": [{"kind": "dir", "path": str(src)}], "output": str(out),
                               "dedup": {"near": True}, "shards": {"max_samples": 1000}}))
    t0 = time.time()
    res = subprocess.run([sys.executable, "-m", "pipelines.cli", "run", str(cfg), "--", *beam_args],
                         cwd=REPO, capture_output=True, text=True)
    wall = time.time() - t0
    if res.returncode != 0:
        raise RuntimeError(res.stderr[-3000:])
    stats = json.loads((out / "_stats.json").read_text())
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"args": beam_args, "inputs": stats["inputs"], "kept": stats["kept"], "wall_s": round(wall, 2),
            "img_per_s": round(stats["inputs"] / wall, 1), "peak_child_rss_mb_so_far": round(rss, 1)}


def main(n: int = 1000) -> dict:
    work = Path(tempfile.mkdtemp(prefix="polycap-bench-"))
    try:
        make_input(work / "in", n)
        runs = [run_once(work / "in", work / "out1", []),
                run_once(work / "in", work / "out2",
                         ["--direct_running_mode=multi_processing", "--direct_num_workers=2"])]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    best = max(r["img_per_s"] for r in runs)
    result = {"images": n, "runs": runs, "best_img_per_s": best, "target_img_per_s": 0.75 * FLOOR_2PROC,
              "meets_target": best >= 0.75 * FLOOR_2PROC,
              "note": "wall time of `polycap run` including Beam start-up; 2-core machine"}
    out = REPO / "bench" / "results" / "pipeline.json"
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1000)
