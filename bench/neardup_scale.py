"""Near-dup search at scale: 1M synthetic 64-bit pHashes with planted clusters, one hot cluster and 1 %
solid-colour images, through the cores of transforms/neardup.py (the compiled pair kernel that the Beam step
runs per key, and the other functions the Beam steps call): multi-index candidates, bounded keys, clustering
around centres.

Run: `.venv/bin/python -m bench.neardup_scale` -> bench/results/neardup_scale.json.
Before the clock starts, the compiled pair kernel (numba, cached on disk) is loaded by a first small call
(`first_call_seconds`: a cache load, or the compile when the cache is cold); `compile_cold_seconds` is a
fresh process against an empty NUMBA_CACHE_DIR: what a worker without the cache pays once.
Targets (asserted): < 60 s, < 1 GB peak RSS, recall 1.0 of planted pairs within the radius, precision 1.0
(every reported pair is within the radius), completeness against brute force for sampled queries, no key
over the configured bound, and no dropped image whose kept centre is not one verified pair away.
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numba
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench import write_result
from polycap.schemas.config import DedupConfig
from polycap.transforms.neardup import all_pairs_within, centre_rounds, mih_widths, n_blocks, stable_hash

N = 1_000_000
SOLID_FRACTION = 0.01
CLUSTERS = 30_000          # planted near-dup clusters of 2..12 copies, each copy within t/2 bits of its seed
HOT_CLUSTER = 1_500        # one picture copied 1,500 times (<= 2 bits apart): a hot key without the bound
SEED = 0


def flip(h: np.ndarray, n_bits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each hash with n_bits[i] distinct random bits flipped."""
    out = h.copy()
    for k in range(int(n_bits.max()) + 1):
        rows = np.flatnonzero(n_bits > k)
        if rows.size:
            out[rows] ^= np.uint64(1) << rng.integers(0, 64, rows.size).astype(np.uint64)
    # a repeated bit un-flips; good enough for planting (recall is measured on actual distances)
    return out


def synthetic(t: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(hashes, cluster id or -1, solid flag) for N items."""
    h = rng.integers(0, np.iinfo(np.int64).max, N, dtype=np.int64).astype(np.uint64) ^ (
        rng.integers(0, 2, N).astype(np.uint64) << np.uint64(63))
    cluster = np.full(N, -1, dtype=np.int64)
    sizes = rng.integers(2, 13, CLUSTERS)
    pos = 0
    for c, size in enumerate(sizes.tolist()):
        idx = np.arange(pos, pos + size)
        h[idx] = flip(np.full(size, h[pos]), rng.integers(0, t // 2 + 1, size), rng)
        cluster[idx] = c
        pos += size
    hot = np.arange(pos, pos + HOT_CLUSTER)
    h[hot] = flip(np.full(HOT_CLUSTER, h[pos]), rng.integers(0, 3, HOT_CLUSTER), rng)
    cluster[hot] = CLUSTERS
    pos += HOT_CLUSTER
    solid = np.zeros(N, bool)
    solid[rng.choice(np.arange(pos, N), int(N * SOLID_FRACTION), replace=False)] = True
    h[solid] = np.uint64(0x8000000000000000)   # what a flat image's DCT gives: DC bit only
    perm = rng.permutation(N)
    return h[perm], cluster[perm], solid[perm]


def planted_pairs(cluster: np.ndarray, h: np.ndarray, t: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(cluster, kind="stable")
    order = order[cluster[order] >= 0]
    c = cluster[order]
    a, b = [], []
    d = 1
    pos = np.arange(len(order) - 1)
    while pos.size:
        pos = pos[pos + d < len(order)]
        pos = pos[c[pos + d] == c[pos]]
        a.append(order[pos])
        b.append(order[pos + d])
        d += 1
    a, b = np.concatenate(a), np.concatenate(b)
    a, b = np.minimum(a, b), np.maximum(a, b)
    within = np.bitwise_count(h[a] ^ h[b]) <= t
    return a[within], b[within]


def brute_force_check(h: np.ndarray, queries: np.ndarray, t: int, got: set[int]) -> int:
    """Pairs within t of the sampled queries that the search missed (should be 0)."""
    missed = 0
    for q in queries.tolist():
        d = np.bitwise_count(h ^ h[q])
        for o in np.flatnonzero(d <= t).tolist():
            if o != q and (min(o, q) * N + max(o, q)) not in got:
                missed += 1
    return missed


FIRST_CALL = ("import numpy as np, time; t0 = time.perf_counter(); "
              "from polycap.transforms.neardup import all_pairs_within, key_pairs; "
              "all_pairs_within(np.arange(64, dtype=np.uint64), 10); key_pairs([1, 3, 7], 0, 0, 10); "
              "print(time.perf_counter() - t0)")


def compile_cold() -> float:
    """Seconds to import and first call the kernels in a fresh process with an empty numba cache."""
    with tempfile.TemporaryDirectory() as cache:
        out = subprocess.run([sys.executable, "-c", FIRST_CALL], env={**os.environ, "NUMBA_CACHE_DIR": cache},
                             capture_output=True, text=True, check=True, cwd=REPO)
    return float(out.stdout.split()[-1])


def main() -> dict:
    load_before = os.getloadavg()
    cold = compile_cold()
    f0 = time.time()
    all_pairs_within(np.arange(64, dtype=np.uint64), 10)
    first_call = time.time() - f0
    cfg = DedupConfig(max_key_items=1024)   # below the hot key, so the split into blocks runs
    t, bound = cfg.max_hamming, cfg.max_key_items
    rng = np.random.default_rng(SEED)
    h_all, cluster, solid = synthetic(t, rng)
    rank = rng.permutation(N)      # stands in for the best-copy order (area, border, quality, caption)
    t0 = time.time()
    # 1. solid colours: an exact class each (a Combine per class in Beam: keep the best rank)
    solid_idx = np.flatnonzero(solid)
    solid_kept = solid_idx[np.argmin(rank[solid_idx])]
    # 2. candidates among the rest: multi-index hashing, every pair within t exactly once
    rest = np.flatnonzero(~solid)
    h = h_all[rest]
    a, b, biggest = all_pairs_within(h, t)
    t_pairs = time.time() - t0
    # 3. bounded keys: a key over the bound is cut into hash blocks (as the Beam step does, by item key);
    #    the fullest block pair of the biggest key must fit the bound
    nb = n_blocks(biggest.size, bound)
    blocks = np.bincount([stable_hash(f"k{i}") % nb for i in biggest.tolist()], minlength=nb)
    biggest_split = int(biggest.size if nb == 1 else max(blocks[x] + blocks[y] * (x != y)
                                                          for x in range(nb) for y in range(x, nb)))
    # 4. clustering around centres (ranks: lower = better copy)
    r = rank[rest]
    better, worse = np.where(r[a] < r[b], a, b), np.where(r[a] < r[b], b, a)
    order = np.argsort(r)                   # node ids by rank, so "lower id = better" as centre_rounds wants
    inv = np.empty_like(order)
    inv[order] = np.arange(len(order))
    centre, undecided = centre_rounds(inv[better], inv[worse], len(h), cfg.center_rounds)
    seconds = time.time() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    got = set((a.astype(np.int64) * N + b).tolist())
    pa, pb = planted_pairs(cluster[rest], h, t)
    found_planted = sum((x * N + y) in got for x, y in zip(pa.tolist(), pb.tolist()))
    dists = np.bitwise_count(h[a] ^ h[b])
    queries = rng.choice(len(h), 200, replace=False)
    missed = brute_force_check(h, queries, t, got)
    dropped = np.flatnonzero((centre >= 0) & (centre != np.arange(len(h))))
    edge_ids = set((np.minimum(inv[a], inv[b]).astype(np.int64) * N + np.maximum(inv[a], inv[b])).tolist())
    not_adjacent = sum((min(c, w) * N + max(c, w)) not in edge_ids for w, c in
                       zip(dropped.tolist(), centre[dropped].tolist()))
    centre_dropped = int((centre[centre[dropped]] != centre[dropped]).sum())
    out = {
        "items": N, "solid_colour_items": int(solid.sum()), "planted_clusters": CLUSTERS,
        "hot_cluster_copies": HOT_CLUSTER, "max_hamming": t, "mih_substring_bits": mih_widths(t),
        "keys_per_item": sum(w + 1 for w in mih_widths(t)),
        "seconds": round(seconds, 1), "seconds_candidates": round(t_pairs, 1), "peak_rss_mb": round(peak_mb),
        "first_call_seconds": round(first_call, 2), "compile_cold_seconds": round(cold, 1),
        "numba": numba.__version__,
        "load_average_1m_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "pairs_found": int(a.size), "planted_pairs_within_radius": int(pa.size),
        "recall_planted": round(found_planted / max(1, pa.size), 6),
        "precision_within_radius": round(float((dists <= t).mean()) if dists.size else 1.0, 6),
        "brute_force_queries": int(queries.size), "brute_force_missed_pairs": missed,
        "max_items_per_key_before_split": int(biggest.size), "key_bound": bound, "blocks_for_biggest_key": nb,
        "max_items_per_key": biggest_split,
        "solid_class_kept": int(solid_kept), "solid_dropped": int(solid.sum()) - 1,
        "clusters": {"centres": int((centre == np.arange(len(h))).sum()), "dropped": int(dropped.size),
                     "undecided_kept": undecided, "rounds": cfg.center_rounds,
                     "dropped_not_adjacent_to_centre": not_adjacent, "centre_dropped": centre_dropped},
    }
    write_result("neardup_scale", out)
    assert seconds < 60, seconds
    assert peak_mb < 1024, peak_mb
    assert out["recall_planted"] == 1.0 and out["precision_within_radius"] == 1.0 and missed == 0, out
    assert biggest_split <= bound, (biggest.size, biggest_split, bound)
    assert not_adjacent == 0 and centre_dropped == 0, out["clusters"]
    return out


if __name__ == "__main__":
    print(json.dumps(main(), indent=1))
