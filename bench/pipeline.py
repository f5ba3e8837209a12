"""Throughput of the main job, dir -> decode -> filter -> dedup -> shards, on real photos, against its target.

Target (the project's performance budget; `target_img_per_s` in the results): >= 0.75x the two-process
floor of 178 img/s measured for the bare per-image work on this 2-core machine, i.e. >= 133 img/s.
Inputs are 1000 distinct JPEG variants of the real eval photos <= 1600 px (see `make_input`), so dedup,
filters and shards see a realistic mix. Besides the job's wall time (Beam start-up included) it records the
bare per-image chain on the same files (the floor this input allows), the fixed cost of a 10-image run,
each run's CPU seconds and the machine load, and whether every run wrote byte-identical shards.
Run: `python -m bench.pipeline [N] [REPEATS]`.
Writes bench/results/pipeline.json.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

from bench import write_result

REPO = Path(__file__).resolve().parents[1]
EVAL = REPO.parent / "shared" / "eval" / "photos"
FLOOR_2PROC = 178.0
MODES = {"in_memory": [], "multi_processing_x2": ["--direct_running_mode=multi_processing",
                                                     "--direct_num_workers=2"]}


def source_photos(max_px: int = 1600) -> list[Path]:
    """Decodable eval photos whose longer side is <= max_px (the population the 178 img/s floor was measured on)."""
    out = []
    for p in sorted(EVAL.rglob("*")):
        if p.suffix.lower() not in (".jpg", ".jpeg", ".png") or "edge_formats" in p.parts:
            continue
        with Image.open(p) as im:
            if max(im.size) <= max_px:
                out.append(p)
    return out


def variant(im: Image.Image, rng: random.Random) -> Image.Image:
    """A visibly different image from a real photo: random crop (45-90% per side), optional mirror,
    per-channel colour gain, rescaled back to about the photo's own pixel count (x0.8-1.2, longer side
    capped at 1600 px), so pHashes differ while sizes match that population."""
    w, h = im.size
    cw, ch = int(w * rng.uniform(0.45, 0.9)), int(h * rng.uniform(0.45, 0.9))
    x, y = rng.randrange(0, w - cw + 1), rng.randrange(0, h - ch + 1)
    out = im.crop((x, y, x + cw, y + ch))
    if rng.random() < 0.5:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    gains = [rng.uniform(0.8, 1.2) for _ in range(3)]
    out = Image.merge("RGB", [b.point(lambda v, g=g: min(255, int(v * g))) for b, g in zip(out.split(), gains)])
    s = min(rng.uniform(0.8, 1.2) * ((w * h) / (cw * ch)) ** 0.5, 1600 / max(out.size))
    return out.resize((max(8, int(out.width * s)), max(8, int(out.height * s))), Image.Resampling.BILINEAR)


def make_input(dest: Path, n: int, exact_copies: float = 0.02, seed: int = 0) -> dict:
    """n input files: distinct JPEG variants of the real photos <= 1600 px, plus ~2% byte-identical copies
    (exercising exact dedup). Seeded, so every run times the same inputs."""
    rng = random.Random(seed)
    photos = [Image.open(p).convert("RGB") for p in source_photos()]
    dest.mkdir(parents=True)
    written: list[Path] = []
    for i in range(n):
        path = dest / f"{i:05d}.jpg"
        if written and rng.random() < exact_copies:
            path.write_bytes(rng.choice(written).read_bytes())
        else:
            variant(photos[i % len(photos)], rng).save(path, format="JPEG", quality=rng.randint(80, 95))
        written.append(path)
    sizes = []
    for p in written:
        with Image.open(p) as im:
            sizes.append(im.size)
    return {"source_photos": len(photos), "files": n,
            "mean_megapixels": round(sum(w * h for w, h in sizes) / n / 1e6, 3),
            "max_side": max(max(s) for s in sizes)}


def _child_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_once(src: Path, out: Path, beam_args: list[str]) -> dict:
    cfg = out.parent / f"{out.name}.yaml"
    cfg.write_text(json.dumps({"sources": [{"kind": "dir", "path": str(src)}], "output": str(out),
                               "dedup": {"near": True}, "shards": {"max_samples": 1000}}))
    load = os.getloadavg()[0]
    cpu0, t0 = _child_cpu(), time.time()
    res = subprocess.run([sys.executable, "-m", "polycap.pipelines.cli", "run", str(cfg), "--", *beam_args],
                         check=False, cwd=REPO, capture_output=True, text=True)
    wall, cpu = time.time() - t0, _child_cpu() - cpu0
    if res.returncode != 0:
        raise RuntimeError(res.stderr[-3000:])
    stats = json.loads((out / "_stats" / "train.json").read_text())
    assert stats["balanced"], stats
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"args": beam_args, "inputs": stats["inputs"], "kept": stats["kept"],
            "rejected_by_reason": stats["rejected_by_reason"], "wall_s": round(wall, 2),
            "cpu_s": round(cpu, 2), "img_per_s": round(stats["inputs"] / wall, 1),
            "load_avg_1m_before": round(load, 2), "peak_child_rss_mb_so_far": round(rss, 1)}


def chain_floor(src: Path, rounds: int = 2) -> dict:
    """The bare per-image work (read, sha256, decode_bytes: decode, EXIF, RGB, pHash, JPEG) on the same
    files in this one process, best of `rounds`: what the job would cost with zero framework overhead."""
    from bench.cpu_chain import chain_once
    from polycap.schemas.config import DecodeConfig

    cfg, paths, best, failures = DecodeConfig(), sorted(src.iterdir()), None, 0
    for _ in range(rounds):
        cpu, wall, failures = chain_once(paths, cfg)
        best = min(best or (wall, cpu), (wall, cpu))
    wall, cpu = best
    return {"images": len(paths), "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
            "ms_per_img_cpu": round(1000 * cpu / len(paths), 2),
            "img_per_s_1proc": round(len(paths) / wall, 1), "img_per_s_2proc": round(2 * len(paths) / wall, 1),
            "decode_failures": failures}


def main(n: int = 1000, repeats: int = 2) -> dict:
    work = Path(tempfile.mkdtemp(prefix="polycap-bench-"))
    try:
        t0 = time.time()
        inputs = make_input(work / "in", n)
        inputs["make_s"] = round(time.time() - t0, 1)
        make_input(work / "tiny", 10, seed=1)
        floor = chain_floor(work / "in")
        fixed = run_once(work / "tiny", work / "out_tiny", [])
        runs = []
        for r in range(repeats):
            for mode, args in MODES.items():
                res = run_once(work / "in", work / f"out_{mode}_{r}", args)
                res["mode"] = mode
                runs.append(res)
                print(json.dumps(res), file=sys.stderr, flush=True)
        digests = {shard_digest(work / f"out_{m}_{r}") for m in MODES for r in range(repeats)}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    best = max(r["img_per_s"] for r in runs)
    median = statistics.median(r["img_per_s"] for r in runs)
    by_mode = {m: sorted(r["img_per_s"] for r in runs if r["mode"] == m) for m in MODES}
    result = {
        "images": n, "inputs": inputs, "runs": runs, "best_img_per_s": best, "median_img_per_s": median,
        "img_per_s_by_mode": by_mode,
        "target_img_per_s": 0.75 * FLOOR_2PROC, "meets_target": best >= 0.75 * FLOOR_2PROC,
        "meets_target_median": median >= 0.75 * FLOOR_2PROC,
        "same_input_chain_floor": floor,
        "best_vs_same_input_2proc_floor": round(best / floor["img_per_s_2proc"], 3),
        "fixed_cost_10_images_in_memory": {"wall_s": fixed["wall_s"], "cpu_s": fixed["cpu_s"]},
        "split_of_best_in_memory_run": split(runs, fixed, floor),
        "shards_identical_across_runs_and_modes": len(digests) == 1,
        "note": "wall time of `polycap run` (a fresh process: imports, Beam start-up, the job, stats); "
                "2-core machine shared with other jobs, see load_avg_1m_before; cpu_s = user+sys of the "
                "job's processes",
    }
    write_result("pipeline", result)
    print(json.dumps(result, indent=2))
    return result


def split(runs: list[dict], fixed: dict, floor: dict) -> dict:
    """The best in-memory run's CPU split into the fixed cost (the 10-image run's CPU), the per-image work the
    floor also does (its CPU on the same files) and the rest (per-image overhead: Beam's per-element work,
    staging, dedup, shards, rejects, stats), and how many cores it kept busy on average (CPU / wall)."""
    best = max((r for r in runs if r["mode"] == "in_memory"), key=lambda r: r["img_per_s"])
    rest = best["cpu_s"] - fixed["cpu_s"] - floor["cpu_s"]
    return {"cpu_s": best["cpu_s"], "fixed_cpu_s": fixed["cpu_s"], "floor_work_cpu_s": floor["cpu_s"],
            "overhead_cpu_s": round(rest, 2), "overhead_ms_per_img": round(1000 * rest / floor["images"], 2),
            "cores_busy": round(best["cpu_s"] / best["wall_s"], 2)}


def shard_digest(out: Path) -> str:
    """sha256 over the shard files (names and bytes): equal across reruns and runner modes."""
    h = hashlib.sha256()
    for p in sorted((out / "shards").glob("*.tar")):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1000, int(sys.argv[2]) if len(sys.argv) > 2 else 2)
