"""Near-dup evaluation: what DedupImages decides on two sets, the pHash threshold sweep, and the cost.

Run: `.venv/bin/python -m bench.neardup_eval` -> bench/results/neardup.json (builds bench/work/neardup_set
with bench.neardup_data first when it is missing).
 * `dedup_images`: the real stage (decode_sample -> DedupImages, in-memory Beam, default config) on
   - `generated_set` (bench/neardup_data.py): 140 en/ko/vi text cards, 40 documents, 40 screenshots of one
     layout each and 28 distinct photos, 76 of them with border / letterbox / 5 % crop / watermark /
     recompress / resize variants. False merges = two groups in one cluster (target 0, per family); recall
     per variant = variant and original in one cluster (target >= 0.9); original kept per group (>= 90 %);
   - `shared_eval` (../shared/eval/neardup + photos): pairs labelled dup merged, by category; false merges
     among files of different groups (see `groups`).
 * `signature_ms`: CPU ms/image of transforms/signature.signature (what decode now adds) on the decoded
   photos and rendered images of the generated set.
 * `dedup_stage`: bench/results/dedup_stage.json (bench/dedup_stage.py, before/after) copied in, with ratios.
 * `results`/`chosen_default`: the whole-image pHash threshold sweep, as before: hashes computed as the
   eval set's own check_hashes.py does and through decode_bytes (default and max_side=512). Positives are
   the pairs labelled `dup` in pairs.csv; negatives every cross-group pair among all images in the set plus
   the real photos under eval/photos (groups = files linked by a dup/maybe pair, identical bytes, or the
   same upstream name).
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
from dataclasses import replace
from itertools import combinations
from pathlib import Path

import apache_beam as beam
from PIL import Image, ImageOps

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench import write_result
from polycap.schemas import Reject, Sample
from polycap.schemas.config import DecodeConfig, DedupConfig
from polycap.transforms.decode import DecodeFailure, decode_bytes, decode_sample, phash_hex
from polycap.transforms.dedup import DedupImages, to_member
from polycap.transforms.pixel_check import BLOCK_TESTS, detail_match
from polycap.transforms.signature import encoding_quality, signature
from tests.conftest import make_sample

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
    return {"t": row["t"], "recall": row["recall"], "recall_by_category": row["recall_by_category"],
            "margin_to_nearest_distinct": result["min_distinct_distance"] - row["t"],
            "chance_collision_vs_chosen": round(row["uniform_hash_p_false_pair"] / at["uniform_hash_p_false_pair"]),
            "note": "crops, borders, flips and rotations are a policy decision ('maybe' in the eval set)"}


# ---- the real stage -------------------------------------------------------------------------------

_SAMPLES: list[Sample] = []
_OUT: list[Sample | Reject] = []


def _sample_at(i: int) -> Sample:
    return _SAMPLES[i]


def _collect(x: Sample | Reject) -> None:
    _OUT.append(x)   # the in-memory runner runs in this process


def clusters(files: dict[str, bytes]) -> tuple[dict[str, str], dict[str, str]]:
    """file -> its cluster (the kept file it was dropped for, else itself), and file -> reject detail.
    Runs decode_sample then DedupImages(DedupConfig()) in memory; undecodable files are left out."""
    by_key: dict[str, list[str]] = defaultdict(list)
    samples = []
    for name, data in sorted(files.items()):
        s = decode_sample(make_sample(data, uri=name), DecodeConfig())
        if isinstance(s, Sample):
            samples.append(replace(s, image=replace(s.image, bytes=b"")))
            by_key[s.key].append(name)
    _SAMPLES[:] = samples
    _OUT.clear()
    with beam.Pipeline() as p:
        kept, rejects = (p | beam.Create(range(len(samples))) | beam.Map(_sample_at)
                         | DedupImages(DedupConfig()))
        (kept, rejects) | beam.Flatten() | beam.Map(_collect)
    out = list(_OUT)
    kept_file = {s.key: s.source.uri for s in out if isinstance(s, Sample)}
    cluster, why = {}, {}
    for r in out:
        if isinstance(r, Sample):
            cluster[r.source.uri] = r.source.uri
        else:
            kept_key = r.detail.split()[3] if r.detail.startswith("near duplicate of") else r.key
            cluster[r.source_uri], why[r.source_uri] = kept_file[kept_key], r.detail
    return cluster, why


def generated_set_eval() -> dict:
    """DedupImages on bench/neardup_data.py's set: false merges, recall per variant, original kept."""
    from bench import neardup_data

    labels_path = neardup_data.OUT / "labels.json"
    if not labels_path.exists():
        neardup_data.build()
    labels = json.loads(labels_path.read_text())
    files = {r["file"]: (neardup_data.OUT / r["file"]).read_bytes() for r in labels}
    t0 = time.process_time()
    cluster, why = clusters(files)
    cpu = time.process_time() - t0
    info = {r["file"]: r for r in labels}
    check = pixel_check(list(_SAMPLES), info)   # _SAMPLES: what clusters() decoded
    members: dict[str, list[str]] = defaultdict(list)
    for f, c in cluster.items():
        members[c].append(f)
    false_merges: dict[str, int] = defaultdict(int)
    examples = []
    for c, fs in members.items():
        groups_in = sorted({info[f]["group"] for f in fs})
        if len(groups_in) > 1:
            for f in fs:
                if info[f]["group"] != info[c]["group"]:
                    false_merges[info[f]["family"]] += 1
                    examples.append({"dropped": f, "kept": c, "detail": why.get(f, "")})
    recall: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    recall_fam: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    orig_of = {r["group"]: r["file"] for r in labels if r["role"] == "original"}
    missed = []
    for r in labels:
        if r["role"] == "original":
            continue
        ok = cluster[r["file"]] == cluster[orig_of[r["group"]]]
        recall[r["role"]][0] += ok
        recall[r["role"]][1] += 1
        recall_fam[f"{r['family']}/{r['role']}"][0] += ok
        recall_fam[f"{r['family']}/{r['role']}"][1] += 1
        if not ok:
            missed.append(r["file"])
    with_variants = {r["group"] for r in labels if r["role"] != "original"}
    orig_kept = [g for g in with_variants if cluster[orig_of[g]] == orig_of[g]]
    kept_instead = sorted(cluster[orig_of[g]] for g in with_variants if cluster[orig_of[g]] != orig_of[g])
    distinct = {fam: sum(1 for r in labels if r["role"] == "original" and r["family"] == fam)
                for fam in ("text", "doc", "screen", "photo")}
    return {
        "files": len(labels), "decoded": len(cluster), "distinct_originals_by_family": distinct,
        "false_merges_by_family": {fam: false_merges.get(fam, 0) for fam in distinct},
        "false_merge_examples": examples[:10],
        "recall_by_variant": {k: round(a / n, 3) for k, (a, n) in sorted(recall.items())},
        "recall_by_family_variant": {k: f"{a}/{n}" for k, (a, n) in sorted(recall_fam.items())},
        "recall_all_variants": round(sum(a for a, _ in recall.values()) / sum(n for _, n in recall.values()), 4),
        "missed_variants": missed,
        "groups_with_variants": len(with_variants),
        "original_kept_share": round(len(orig_kept) / len(with_variants), 4),
        "kept_instead_of_original": kept_instead,
        "decode_plus_dedup_cpu_s": round(cpu, 1),
        "pixel_check": check,
    }


PIXEL_CHECK_RADIUS = 16   # pairs judged: wider than max_hamming, so the margin is seen beyond the radius


def pixel_check(samples: list[Sample], info: dict[str, dict]) -> dict:
    """neardup.detail_match on every pair of the generated set within content pHash PIXEL_CHECK_RADIUS:
    distinct pairs that pass (target 0) and how close they come (also with each BLOCK_TESTS share lowered
    by `margin`), labelled original-variant pairs that fail, by pHash radius."""
    members = [(s.source.uri, m) for s in samples if (m := to_member(s)) is not None and not m.solid]
    distinct, variants = [], []
    for (fa, a), (fb, b) in combinations(members, 2):
        dist = (a.phash ^ b.phash).bit_count()
        ra, rb = info[fa], info[fb]
        if dist > PIXEL_CHECK_RADIUS or a.key == b.key:
            continue
        if ra["group"] != rb["group"]:
            distinct.append((dist, *detail_match(a.thumb, b.thumb)[:2], fa, fb))
        elif "original" in (ra["role"], rb["role"]) and ra["role"] != rb["role"]:
            v = fb if ra["role"] == "original" else fa
            variants.append((dist, *detail_match(a.thumb, b.thumb)[:2], v, info[v]["role"]))
    margin = 0.04
    near = sorted(distinct, key=lambda r: -min(s / need for s, (_, need) in zip(r[2], BLOCK_TESTS)))
    fails = [r for r in variants if not r[1]]
    return {
        "radius": PIXEL_CHECK_RADIUS, "block_tests": [list(t) for t in BLOCK_TESTS],
        "distinct_pairs": len(distinct), "distinct_pairs_passing": sum(r[1] for r in distinct),
        f"distinct_pairs_passing_with_shares_lowered_{margin}": sum(
            all(s >= need - margin for s, (_, need) in zip(r[2], BLOCK_TESTS)) for r in distinct),
        "closest_distinct": [{"phash_distance": r[0], "shares": [round(x, 3) for x in r[2]], "a": r[3], "b": r[4]}
                             for r in near[:5]],
        "variant_pairs_passing_by_radius": {t: f"{sum(r[1] for r in variants if r[0] <= t)}/"
                                               f"{sum(1 for r in variants if r[0] <= t)}" for t in (8, 10, 12, 16)},
        "variant_pairs_failing": [{"phash_distance": r[0], "shares": [round(x, 3) for x in r[2]], "file": r[3]}
                                  for r in sorted(fails)],
    }


def shared_eval(pairs, files, grp, data) -> dict:
    """DedupImages on ../shared/eval/neardup's files (+ eval photos): dup pairs merged, false merges."""
    cluster, why = clusters(data)
    merged: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for r in pairs:
        if r["label"] == "dup" and r["a"] in cluster and r["b"] in cluster:
            merged[category(r)][0] += cluster[r["a"]] == cluster[r["b"]]
            merged[category(r)][1] += 1
    maybe = {f"{r['note']}: {Path(r['a']).name} ~ {Path(r['b']).name}": cluster[r["a"]] == cluster[r["b"]]
             for r in pairs if r["label"] == "maybe" and r["a"] in cluster and r["b"] in cluster}
    false = [{"dropped": f, "kept": c, "detail": why.get(f, "")} for f, c in cluster.items()
             if grp[f] != grp[c]]
    return {"files": len(files), "decoded": len(cluster),
            "dup_pairs_merged_by_category": {k: f"{a}/{n}" for k, (a, n) in sorted(merged.items())},
            "must_merge_recall": round(sum(merged[c][0] for c in MUST_MERGE) /
                                       max(1, sum(merged[c][1] for c in MUST_MERGE)), 4),
            "false_merges": len(false), "false_merge_examples": false[:10],
            "maybe_pairs_merged": maybe}


def signature_ms() -> dict:
    """CPU ms/image that decode's signature adds, on decoded images of the generated set (every file)."""
    from bench import neardup_data

    ims = []
    for p in sorted(neardup_data.OUT.glob("*.*")):
        if p.suffix in (".png", ".jpg"):
            im = Image.open(p)
            q = encoding_quality(im)
            ims.append((ImageOps.exif_transpose(im).convert("RGB"), q))
    best = None
    for _ in range(3):
        t0 = time.process_time()
        for im, q in ims:
            signature(im, q)
        ms = 1000 * (time.process_time() - t0) / len(ims)
        best = ms if best is None else min(best, ms)
    t0 = time.process_time()
    for im, _ in ims:
        phash_hex(im)
    return {"images": len(ims), "mean_megapixels": round(sum(i.width * i.height for i, _ in ims) / len(ims) / 1e6, 3),
            "signature_ms_per_image_cpu_best_of_3": round(best or 0.0, 2),
            "whole_image_phash_ms_per_image_cpu": round(1000 * (time.process_time() - t0) / len(ims), 2)}


def dedup_stage() -> dict:
    path = REPO / "bench" / "results" / "dedup_stage.json"
    if not path.exists():
        return {"note": "run bench/dedup_stage.py before/after first"}
    d = json.loads(path.read_text())
    if "before" in d and "after" in d:
        b, a = d["before"], d["after"]
        d["ratio_after_over_before"] = {
            "dedup_cpu_s": round(a["dedup_cpu_s_best"] / b["dedup_cpu_s_best"], 2),
            "dedup_minus_floor_cpu_s": round(a["dedup_minus_floor_cpu_s"] / max(0.01, b["dedup_minus_floor_cpu_s"]), 2)}
        if "pipeline" in a and "pipeline" in b:
            d["ratio_after_over_before"]["pipeline_cpu_s_min"] = {
                m: round(min(a["pipeline"][m]["cpu_s"]) / min(b["pipeline"][m]["cpu_s"]), 2)
                for m in ("in_memory", "multi_processing_x2")}
    return d


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
    generated = generated_set_eval()
    shared = shared_eval(pairs, files, grp, data)
    out = {
        "dedup_images": {"config": f"DedupConfig() defaults: max_hamming {DedupConfig().max_hamming}, pixel check "
                                   f"pixel_check.BLOCK_TESTS {list(BLOCK_TESTS)}",
                         "generated_set": generated, "shared_eval": shared},
        "signature_ms": signature_ms(),
        "dedup_stage": dedup_stage(),
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
    # through the module, not __main__: Beam pickles __main__'s functions by value with the globals they
    # read (_SAMPLES, _OUT), so the collecting Map would fill a copy
    from bench import neardup_eval

    res = neardup_eval.main()
    print(json.dumps({k: res[k] for k in ("dedup_images", "signature_ms", "data", "chosen_default")}, indent=1))
    for name, r in res["results"].items():
        print(name, "min distinct", r["min_distinct_distance"], "max must-merge", r["max_must_merge_distance"],
              "pos", r["n_pos"], "neg", r["n_neg"])
        for row in r["sweep"]:
            if row["t"] in (4, 6, 8, 10, 12, 14, 16, 18, 20):
                print(f"  t={row['t']:2d} P={row['precision']:.3f} R={row['recall']:.3f} "
                      f"must={row['must_merge_recall']:.3f} fp={row['fp']} {row['recall_by_category']}")
