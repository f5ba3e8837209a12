"""Per-image CPU chain cost (read, sha256, decode, EXIF, RGB, pHash, JPEG encode) on the real eval photos.

Run: `.venv/bin/python -m bench.cpu_chain [N]` -> bench/results/cpu_chain.json (N images, default 500,
the eval photos repeated). Single process. Two measurements:
  * `steps`: the chain unrolled step by step with the same calls transforms/decode.py makes, so each
    step's ms/image is visible (the project's budget, `design_budget_ms` in the results: ~10.4 ms/image =
    decode 2.9, pHash 3.6, encode 2.3, exif+RGB 1.4, on 1000 photos <= 1600 px);
  * `decode_bytes`: the real function the pipeline runs (read + sha256 + decode_bytes), img/s.
Both on all decodable photos and on the subset <= 1600 px (the population that budget was measured on).
Times are CPU time of this process (the machine's 2 cores are shared with other jobs); wall-clock img/s is also given.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import PIL
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench import write_result
from polycap.schemas.config import DecodeConfig
from polycap.transforms.decode import (
    DecodeFailure,
    apply_orientation,
    decode_bytes,
    encode_jpeg,
    exif_orientation,
    fit,
    load_pixels,
    open_image,
    phash_hex,
    to_rgb,
)

EVAL = Path(os.environ.get("POLYCAP_EVAL_DIR", REPO.parent / "shared" / "eval"))
STEPS = ("read", "sha256", "decode", "exif", "rgb", "resize", "phash", "encode")


def photo_paths(max_px: int = 0) -> list[Path]:
    """Decodable photos under eval/photos (edge formats excluded), optionally only those <= max_px."""
    out = []
    for p in sorted((EVAL / "photos").rglob("*")):
        if not p.is_file() or "edge_formats" in p.parts or p.suffix.lower() not in (".jpg", ".jpeg", ".png"):
            continue
        if max_px:
            with Image.open(p) as im:
                if max(im.size) > max_px:
                    continue
        out.append(p)
    return out


def repeat(paths: list[Path], n: int) -> list[Path]:
    return [paths[i % len(paths)] for i in range(n)]


def time_steps(paths: list[Path], cfg: DecodeConfig) -> dict[str, float]:
    """Mean ms/image per step, chain unrolled exactly as decode_bytes runs it."""
    acc = dict.fromkeys(STEPS, 0.0)
    clock = time.process_time   # CPU time: the 2 cores are shared, wall time would measure neighbours
    for p in paths:
        t0 = clock()
        data = p.read_bytes()
        t1 = clock()
        hashlib.sha256(data).hexdigest()
        t2 = clock()
        im = open_image(data, cfg.max_pixels)
        pixels, _ = load_pixels(im, data, cfg.max_side)
        t3 = clock()
        orientation = exif_orientation(im)
        t4 = clock()
        rgb, _ = to_rgb(pixels)
        t5 = clock()
        rgb, _ = apply_orientation(rgb, orientation)
        rgb = fit(rgb, cfg.max_side)
        t6 = clock()
        phash_hex(rgb)
        t7 = clock()
        encode_jpeg(rgb, cfg.jpeg_quality)
        t8 = clock()
        for k, (a, b) in zip(STEPS, [(t0, t1), (t1, t2), (t2, t3), (t3, t4), (t4, t5), (t5, t6),
                                     (t6, t7), (t7, t8)]):
            acc[k] += b - a
    ms = {k: round(1000 * v / len(paths), 3) for k, v in acc.items()}
    ms["total"] = round(sum(ms[k] for k in STEPS), 3)
    return ms


def chain_once(paths: list[Path], cfg: DecodeConfig) -> tuple[float, float, int]:
    """(cpu_s, wall_s, decode failures) of read + sha256 + decode_bytes over `paths`, once. Failures are
    still timed (the pipeline pays for them too) and reported, never hidden."""
    c0, w0, failures = time.process_time(), time.perf_counter(), 0
    for p in paths:
        data = p.read_bytes()
        hashlib.sha256(data).hexdigest()
        try:
            decode_bytes(data, cfg)
        except DecodeFailure:
            failures += 1
    return time.process_time() - c0, time.perf_counter() - w0, failures


def time_decode_bytes(paths: list[Path], cfg: DecodeConfig, rounds: int = 2) -> dict[str, float]:
    """img/s of read + sha256 + decode_bytes (the pipeline's per-image work): CPU-time rate (what one
    uncontended core does) and wall-clock rate (depends on what else runs on the box), per round."""
    cpu, wall, failures = [], [], 0
    for _ in range(rounds):
        c, w, failures = chain_once(paths, cfg)
        cpu.append(len(paths) / c)
        wall.append(len(paths) / w)
    return {"img_per_s_cpu_best": round(max(cpu), 1), "img_per_s_cpu_median": round(statistics.median(cpu), 1),
            "ms_per_img_cpu_best": round(1000 / max(cpu), 2), "img_per_s_wall_best": round(max(wall), 1),
            "decode_failures": failures}


def mean_megapixels(paths: list[Path]) -> float:
    total = 0
    for p in paths:
        with Image.open(p) as im:
            total += im.size[0] * im.size[1]
    return round(total / len(paths) / 1e6, 3)


def main(n: int = 500) -> dict:
    t0 = time.time()
    configs = {"default": DecodeConfig(), "max_side_1024": DecodeConfig(max_side=1024)}
    populations = {"all_photos": photo_paths(), "photos_le_1600px": photo_paths(1600)}
    results = {}
    for pop, paths in populations.items():
        batch = repeat(paths, n)
        for name, cfg in configs.items():
            time_steps(batch[: min(40, n)], cfg)   # warm caches and lazy imports
            results[f"{pop}/{name}"] = {
                "distinct_photos": len(paths), "images": len(batch), "mean_megapixels": mean_megapixels(paths),
                "steps_ms": time_steps(batch, cfg), **time_decode_bytes(batch, cfg)}
    out = {
        "what": "single-process per-image CPU chain: read, sha256, decode, EXIF transpose, RGB, pHash, JPEG",
        "design_budget_ms": {"total": 10.4, "decode": 2.9, "phash": 3.6, "encode": 2.3, "exif+rgb": 1.4,
                             "img_per_s": 98},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "pillow": PIL.__version__,
                    "load_avg_at_start": os.getloadavg()[0]},
        "results": results,
        "seconds": round(time.time() - t0, 1),
    }
    write_result("cpu_chain", out, indent=1)
    return out


if __name__ == "__main__":
    print(json.dumps(main(int(sys.argv[1]) if len(sys.argv) > 1 else 500), indent=1))
