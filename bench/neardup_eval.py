"""Near-dup evaluation: precision/recall of `Hamming(pHash) <= t` on ../shared/eval/neardup, t = 0..20.

Run: `.venv/bin/python -m bench.neardup_eval` -> bench/results/neardup.json.
Hashes are computed twice: as the eval set's own check_hashes.py does (exif_transpose + RGB + phash on
the file) and through the pipeline's decode path (transforms.decode.decode_bytes, default DecodeConfig
and a max_side=512 variant), so the numbers describe what DedupImages actually sees.
Positives are the pairs labelled `dup` in pairs.csv. The file has only 6 labelled `distinct` pairs, so
negatives also include every cross-group pair among all images in the set plus the real photos under
eval/photos (groups = files linked by a dup/maybe pair, identical bytes, or the same upstream name).
"""
from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import sys
import time
from collections import defaultdict
from itertools import combinations
from pathlib import Path

from PIL import Image, ImageOps

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench import write_result
from polycap.schemas.config import DecodeConfig
from polycap.transforms.decode import DecodeFailure, decode_bytes, phash_hex

EVAL = Path(os.environ.get("POLYCAP_EVAL_DIR", REPO.parent / "shared" / "eval"))
T_RANGE = range(21)
# Upstream aliases inside real_sets/imageio_vs_skimage and photos/skimage (same picture, other name).
ALIASES = {"immunohistochemistry": "ihc", "clock_motion": "clock"}
# Edit category of each pair, by pairs.csv note or file name: resize / recompress / watermark must merge.
CATEGORY = {
    "resize_50": "resize", "resize_25": "resize", "down_up_blur": "resize",
    "orig_reencoded_q95": "recompress", "jpeg_q30": "recompress", "jpeg_q10": "recompress",
    "webp_q50": "recompress", "watermark_text": "watermark", "brightness_up": "photometric",
    "crop_center_90": "crop_or_border", "pad_border": "crop_or_border",
}
MUST_MERGE = ("resize", "recompress", "watermark")


def category(row: dict[str, str]) -> str:
    if row["kind"] == "generated":
        return CATEGORY.get(row["note"], row["note"])
    name = Path(row["b"]).stem
    if name in ("resize_border", "resize_center_crop"):
        return "crop_or_border"      # img2dataset letterbox / center-crop modes
    if name == "blurred":
        return "photometric"         # face-blurred copy
    if "resize" in name or row["note"] == "img2dataset upstream test variant":
        return "resize"
    return "recompress" if row["label"] == "dup" else row["kind"]


def reference_phash(path: Path) -> str:
    """Exactly what eval/neardup/check_hashes.py computes."""
    return phash_hex(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))


def pipeline_phash(data: bytes, cfg: DecodeConfig) -> str | None:
    try:
        return decode_bytes(data, cfg).phash
    except DecodeFailure:
        return None


def hamming(a: str, b: str) -> int:
    return (int(a, 16) ^ int(b, 16)).bit_count()


def norm_stem(path: str) -> str:
    stem = Path(path).stem
    for p in ("imageio_", "skimage_"):
        stem = stem.removeprefix(p)
    return ALIASES.get(stem, stem)


def load_files(pairs: list[dict[str, str]]) -> list[str]:
    files = {r[k] for r in pairs for k in ("a", "b")}
    for p in (EVAL / "photos").rglob("*"):
        if p.is_file() and "edge_formats" not in p.parts and p.suffix.lower() in (".jpg", ".png", ".jpeg"):
            files.add(str(p.relative_to(EVAL)))
    return sorted(files)


def groups(files: list[str], pairs: list[dict[str, str]], sha: dict[str, str]) -> dict[str, str]:
    """File -> group id; files in different groups are treated as distinct photos."""
    parent = {f: f for f in files}

    def find(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(a: str, b: str) -> None:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)

    for r in pairs:
        if r["label"] in ("dup", "maybe"):
            union(r["a"], r["b"])
    by = defaultdict(list)
    for f in files:
        by[("sha", sha[f])].append(f)
        if "imageio_vs_skimage" in f or f.startswith("photos/skimage/"):
            by[("stem", norm_stem(f))].append(f)
        if f.startswith("neardup/generated/"):
            by[("base", f.split("/")[2])].append(f)
        elif f.startswith(("photos/skimage/", "photos/sklearn/", "photos/matplotlib/")):
            by[("base", Path(f).stem)].append(f)
    for members in by.values():
        for m in members[1:]:
            union(members[0], m)
    return {f: find(f) for f in files}


def binom_tail(t: int, n: int = 64) -> float:
    """P(Hamming <= t) for two independent uniform 64-bit hashes: the floor of false merges at scale."""
    return sum(math.comb(n, k) for k in range(t + 1)) / 2 ** n


def sweep(pos: list[tuple[str, int]], neg: list[int], labelled_neg: list[int]) -> list[dict]:
    rows = []
    for t in T_RANGE:
        tp = sum(d <= t for _, d in pos)
        fp = sum(d <= t for d in neg)
        by_cat = defaultdict(lambda: [0, 0])
        for cat, d in pos:
            by_cat[cat][0] += d <= t
            by_cat[cat][1] += 1
        rows.append({
            "t": t, "tp": tp, "fn": len(pos) - tp, "fp": fp, "fp_labelled_distinct": sum(d <= t for d in labelled_neg),
            "precision": round(tp / (tp + fp), 4) if tp + fp else 1.0,
            "recall": round(tp / len(pos), 4),
            "recall_by_category": {c: round(k / n, 3) for c, (k, n) in sorted(by_cat.items())},
            "must_merge_recall": round(sum(by_cat[c][0] for c in MUST_MERGE) /
                                       max(1, sum(by_cat[c][1] for c in MUST_MERGE)), 4),
            "uniform_hash_p_false_pair": binom_tail(t),
        })
    return rows


def evaluate(hashes: dict[str, str | None], pairs, files, grp) -> dict:
    pos = [(category(r), hamming(hashes[r["a"]], hashes[r["b"]])) for r in pairs
           if r["label"] == "dup" and hashes[r["a"]] and hashes[r["b"]]]
    labelled_neg = [hamming(hashes[r["a"]], hashes[r["b"]]) for r in pairs if r["label"] == "distinct"]
    ok = [f for f in files if hashes[f]]
    neg = [hamming(hashes[a], hashes[b]) for a, b in combinations(ok, 2) if grp[a] != grp[b]]
    maybe = defaultdict(list)
    for r in pairs:
        if r["label"] == "maybe":
            maybe[r["note"]].append(hamming(hashes[r["a"]], hashes[r["b"]]))
    rows = sweep(pos, neg, labelled_neg)
    return {"n_pos": len(pos), "n_neg": len(neg), "n_labelled_distinct": len(labelled_neg),
            "min_distinct_distance": min(neg), "distinct_distance_percentiles":
                {p: sorted(neg)[int(p / 100 * (len(neg) - 1))] for p in (0, 1, 5, 50)},
            "max_must_merge_distance": max(d for c, d in pos if c in MUST_MERGE),
            "maybe_distances": dict(sorted(maybe.items())), "sweep": rows}


def choose(result: dict) -> dict:
    """Smallest t that merges every resize/recompress/watermark pair with no false merge."""
    for row in result["sweep"]:
        if row["must_merge_recall"] == 1.0 and row["fp"] == 0:
            margin = result["min_distinct_distance"] - row["t"]
            return {"t": row["t"], "precision": row["precision"], "recall": row["recall"],
                    "must_merge_recall": 1.0, "margin_to_nearest_distinct": margin,
                    "rule": "smallest t with must-merge recall 1.0 and 0 false merges among distinct pairs"}
    return {"t": None, "rule": "no t satisfies must-merge recall 1.0 with 0 false merges"}


def largest_safe(result: dict, t_chosen: int) -> dict:
    """The largest t that still has 0 false merges here, and what it costs against the chosen t (all
    numbers computed from the sweep, so the note cannot go stale when the eval set changes)."""
    safe = [r for r in result["sweep"] if r["fp"] == 0]
    row = max(safe, key=lambda r: r["t"])
    at = next(r for r in result["sweep"] if r["t"] == t_chosen)
    bands = row["t"] + 1                                  # pigeonhole: t + 1 bands (transforms/dedup.py)
    return {"t": row["t"], "recall": row["recall"], "recall_by_category": row["recall_by_category"],
            "margin_to_nearest_distinct": result["min_distinct_distance"] - row["t"],
            "chance_collision_vs_chosen": round(row["uniform_hash_p_false_pair"] / at["uniform_hash_p_false_pair"]),
            "lsh_bands": bands, "bits_per_band": round(64 / bands, 1),
            "note": "crops, borders, flips and rotations are a policy decision ('maybe' in the eval set)"}


def main() -> dict:
    t0 = time.time()
    with open(EVAL / "neardup" / "pairs.csv") as f:
        pairs = list(csv.DictReader(f))
    with open(EVAL / "neardup" / "hash_report.csv") as f:   # check_hashes.py's distances, to reproduce
        ref_report = {(r["a"], r["b"]): int(r["phash"]) for r in csv.DictReader(f)}
    files = load_files(pairs)
    data = {f: (EVAL / f).read_bytes() for f in files}
    sha = {f: hashlib.sha256(b).hexdigest() for f, b in data.items()}
    grp = groups(files, pairs, sha)
    variants = {
        "reference_check_hashes": {f: reference_phash(EVAL / f) for f in files},
        "pipeline_decode_default": {f: pipeline_phash(b, DecodeConfig()) for f, b in data.items()},
        "pipeline_decode_max_side_512": {f: pipeline_phash(b, DecodeConfig(max_side=512)) for f, b in data.items()},
    }
    ref = variants["reference_check_hashes"]
    mismatch = [(a, b, d, hamming(ref[a], ref[b])) for (a, b), d in ref_report.items() if hamming(ref[a], ref[b]) != d]
    results = {name: evaluate(h, pairs, files, grp) for name, h in variants.items()}
    pipe = variants["pipeline_decode_default"]
    drift = [hamming(ref[f], pipe[f]) for f in files if pipe[f]]
    chosen = choose(results["pipeline_decode_default"])
    if chosen["t"] is not None:
        chosen["largest_safe_t"] = largest_safe(results["pipeline_decode_default"], chosen["t"])
    out = {
        "data": {"pairs_csv_rows": len(pairs), "images": len(files), "groups": len(set(grp.values())),
                 "independent_group_pairs": math.comb(len(set(grp.values())), 2),
                 "eval_dir": str(EVAL), "hash_report_rows_reproduced": len(ref_report) - len(mismatch),
                 "hash_report_mismatches": mismatch[:10]},
        "decode_vs_reference_phash_bits": {"max": max(drift), "nonzero": sum(d > 0 for d in drift),
                                           "n": len(drift)},
        "chosen_default": chosen,
        "at_default": {name: next(r for r in res["sweep"] if r["t"] == chosen["t"])
                       for name, res in results.items()} if chosen["t"] is not None else {},
        "results": results,
        "seconds": round(time.time() - t0, 1),
    }
    write_result("neardup", out, indent=1)
    return out


if __name__ == "__main__":
    res = main()
    print(json.dumps({k: res[k] for k in ("data", "decode_vs_reference_phash_bits", "chosen_default")}, indent=1))
    for name, r in res["results"].items():
        print(name, "min distinct", r["min_distinct_distance"], "max must-merge", r["max_must_merge_distance"],
              "pos", r["n_pos"], "neg", r["n_neg"])
        for row in r["sweep"]:
            if row["t"] in (4, 6, 8, 10, 12, 14, 16, 18, 20):
                print(f"  t={row['t']:2d} P={row['precision']:.3f} R={row['recall']:.3f} "
                      f"must={row['must_merge_recall']:.3f} fp={row['fp']} {row['recall_by_category']}")
