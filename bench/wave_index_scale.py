"""Child-side memory and query time of the cross-wave near-dup search (transforms/cross_wave.py) against the
size of the wave index, for the previous search (every earlier kept pHash loaded into sorted arrays in each
wave's child; copied below from the version that had it) and the current one (the substrings on disk in the
index's `near` table, read per sample).

Each size builds a synthetic index the way a run fills it (sharding/wave_index.finish_wave, parts of 10k kept
rows with a 1 KB thumbnail each): random 64-bit pHashes and ~5 % near copies (1-10 bits flipped) of earlier
ones. 1000 queries: half are near copies (0-12 bits flipped) of kept items, half random. Each search runs in a
fresh interpreter (as a wave's child would hold it): VmRSS before setup, VmHWM after setup + 1000 queries, the
setup time, the time per query, and the whole process's wall and CPU seconds (interpreter and imports too).
Old and new alternate over the rounds, and both must return the same (distance, rowid) lists for every query
(a digest of them is compared). The `near` table's fill is timed too (what finish_wave adds per wave).
Run: `python -m bench.wave_index_scale [N ...]` (default 100000 1000000). Writes
bench/results/wave_index_scale.json (keeping the other sizes it already holds).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from itertools import combinations
from pathlib import Path

import numpy as np

from bench import write_result
from polycap.pipelines.run import code_version

REPO = Path(__file__).resolve().parents[1]
RESULT = REPO / "bench" / "results" / "wave_index_scale.json"
T = 10            # schemas.config.DedupConfig.max_hamming's default
PART = 10_000
ROUNDS = 3


def build(folder: Path, n: int, seed: int = 0) -> dict:
    from polycap.sharding import wave_index as wi
    from polycap.transforms.cross_wave import near_split

    rng = np.random.default_rng(seed)
    h = rng.integers(0, 2**64, n, dtype=np.uint64)
    copies = np.flatnonzero(rng.random(n) < 0.05)
    copies = copies[copies > 0]
    for i in copies:
        bits = rng.choice(64, int(rng.integers(1, 11)), replace=False)
        h[i] = h[int(rng.integers(0, i))] ^ np.uint64(sum(1 << int(b) for b in bits))
    conn = wi.connect(str(folder))
    fill_s = []
    t0 = time.perf_counter()
    for w, lo in enumerate(range(0, n, PART)):
        rows = [{"key": f"{lo + i:016x}", "uri": f"/in/{lo + i}.jpg", "phash": wi.signed64(int(x)), "solid": "",
                 "rank": "[1, 2, 3]", "thumb": rng.bytes(1024)} for i, x in enumerate(h[lo:lo + PART])]
        part = wi.write_part(rows, str(folder / "parts"))
        t1 = time.perf_counter()
        wi.finish_wave(conn, w, [part], {"wave": w})
        fill_s.append(time.perf_counter() - t1)
        os.remove(part)
        if w == 0:
            wi.use_near_widths(str(folder), near_split(T)[0])    # as wave 1's child does
    build_s = time.perf_counter() - t0
    finish = _time_finish_wave(conn, folder, rng, n // PART + 1)
    conn.close()
    with wi.connect(str(folder)) as c:             # what a resumed run of an index without `near` pays once
        c.execute("DELETE FROM meta WHERE k = ?", (wi.NEAR_META,))
    t0 = time.perf_counter()
    wi.use_near_widths(str(folder), near_split(T)[0])
    rebuild_s = time.perf_counter() - t0
    q = [int(h[int(i)]) ^ sum(1 << int(b) for b in rng.choice(64, int(rng.integers(0, 13)), replace=False))
         for i in rng.integers(0, n, 500)] + [int(x) for x in rng.integers(0, 2**64, 500, dtype=np.uint64)]
    np.save(folder / "queries.npy", np.array(q, dtype=np.uint64))
    db = folder / wi.INDEX_NAME
    return {"kept": n, "build_s": round(build_s, 1), "index_mb": round(db.stat().st_size / 2**20, 1),
            "finish_wave_s_per_10k_rows_median": round(statistics.median(fill_s), 3), **finish,
            "near_rebuild_s": round(rebuild_s, 1)}


def _time_finish_wave(conn, folder: Path, rng: np.random.Generator, wave: int) -> dict:
    """finish_wave of a wave of 1000 kept rows, 3 with `near` filed, then 3 without (its widths unset; the
    rebuild after this files their rows)."""
    from polycap.sharding import wave_index as wi

    took: dict[str, list[float]] = {"near": [], "no_near": []}
    for rep in range(6):
        mode = "near" if rep < 3 else "no_near"
        if rep == 3:
            with conn:
                conn.execute("DELETE FROM meta WHERE k = ?", (wi.NEAR_META,))
        rows = [{"key": f"x{wave + rep:06d}{i:06d}", "uri": "u", "phash": wi.signed64(int(x)), "solid": "",
                 "rank": "[]", "thumb": rng.bytes(1024)} for i, x in enumerate(rng.integers(0, 2**64, 1000, np.uint64))]
        part = wi.write_part(rows, str(folder / "parts"))
        t0 = time.perf_counter()
        wi.finish_wave(conn, wave + rep, [part], {})
        took[mode].append(time.perf_counter() - t0)
        os.remove(part)
    return {f"finish_wave_1000_rows_s_{k}": round(statistics.median(v), 3) for k, v in took.items()}


# ---- the previous search (transforms/cross_wave.PriorHashes, sharding/wave_index.textured_hashes) ----
def _old_textured_hashes(conn) -> tuple[np.ndarray, np.ndarray]:
    n = conn.execute("SELECT count(*) FROM kept WHERE phash IS NOT NULL AND solid = ''").fetchone()[0]
    ids, hashes = np.empty(n, np.int64), np.empty(n, np.int64)
    cur = conn.execute("SELECT rowid, phash FROM kept WHERE phash IS NOT NULL AND solid = '' ORDER BY rowid")
    i = 0
    while rows := cur.fetchmany(4096):
        block = np.asarray(rows, dtype=np.int64).reshape(-1, 2)
        ids[i:i + len(block)], hashes[i:i + len(block)] = block[:, 0], block[:, 1]
        i += len(block)
    return ids[:i], hashes[:i].view(np.uint64)


class OldPriorHashes:
    def __init__(self, ids: np.ndarray, hashes: np.ndarray, t: int):
        from polycap.transforms.neardup import mih_widths, substrings
        self.ids, self.h, self.t = ids, hashes, t
        self.widths = mih_widths(t)
        self.substrings = substrings
        s = min(2, t // len(self.widths))
        self.subs: list[np.ndarray] = []
        self.orders: list[np.ndarray] = []
        self.flips: list[np.ndarray] = []
        for w, sub in zip(self.widths, substrings(hashes, self.widths)):
            order = np.argsort(sub, kind="stable").astype(np.uint32)
            self.orders.append(order)
            self.subs.append(sub[order].astype(np.uint16 if w <= 16 else np.uint32))
            masks = [0] + [sum(1 << b for b in bits) for r in range(1, s + 1) for bits in combinations(range(w), r)]
            self.flips.append(np.array(masks, dtype=np.uint64))

    def within(self, phash: int) -> list[tuple[int, int]]:
        if not len(self.h):
            return []
        q = np.array([phash], dtype=np.uint64)
        found: list[np.ndarray] = []
        for sub, order, flips, qs in zip(self.subs, self.orders, self.flips, self.substrings(q, self.widths)):
            values = (qs[0] ^ flips).astype(sub.dtype)
            lo, hi = np.searchsorted(sub, values, "left"), np.searchsorted(sub, values, "right")
            found.extend(order[a:b] for a, b in zip(lo, hi) if b > a)
        if not found:
            return []
        idx = np.unique(np.concatenate(found))
        dist = np.bitwise_count(self.h[idx] ^ q[0])
        ok = dist <= self.t
        return sorted(zip(dist[ok].tolist(), self.ids[idx[ok]].tolist()))
# ---- end of the previous search ----


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def child(mode: str, folder: str) -> None:
    """One wave child's search: setup as _DropKnownFn.setup does it, then the queries; prints a JSON line."""
    from polycap.sharding import wave_index as wi
    from polycap.transforms.cross_wave import EarlierHashes, near_split

    queries = [int(x) for x in np.load(Path(folder) / "queries.npy")]
    base = _status_kb("VmRSS")
    t0 = time.perf_counter()
    if mode == "old":
        conn = wi.connect(folder, readonly=True)
        prior = OldPriorHashes(*_old_textured_hashes(conn), T)
    else:
        wi.use_near_widths(folder, near_split(T)[0])
        conn = wi.connect(folder, readonly=True)
        prior = EarlierHashes(conn, T)
    setup_s = time.perf_counter() - t0
    after_setup = _status_kb("VmRSS")
    per, found = [], []
    for q in queries:
        t1 = time.perf_counter()
        found.append(prior.within(q))
        per.append(time.perf_counter() - t1)
    conn.close()
    digest = hashlib.sha256(json.dumps(found).encode()).hexdigest()[:16]
    print(json.dumps({"setup_s": setup_s, "query_ms_median": 1e3 * statistics.median(per),
                      "query_ms_mean": 1e3 * statistics.mean(per), "rss_before_setup_mb": base / 1024,
                      "rss_after_setup_mb": after_setup / 1024, "peak_rss_mb": _status_kb("VmHWM") / 1024,
                      "found": sum(map(len, found)), "digest": digest}))


def measure(folder: Path) -> dict:
    runs: dict[str, list[dict]] = {"old": [], "new": []}
    for _ in range(ROUNDS):
        for mode in ("old", "new"):
            t0 = time.perf_counter()
            proc = subprocess.Popen([sys.executable, "-m", "bench.wave_index_scale", "--child", mode, str(folder)],
                                    cwd=REPO, stdout=subprocess.PIPE, text=True)
            out = proc.stdout.read() if proc.stdout else ""
            _, status, usage = os.wait4(proc.pid, 0)
            wall = time.perf_counter() - t0
            assert os.waitstatus_to_exitcode(status) == 0, f"{mode} child failed"
            runs[mode].append({**json.loads(out.strip().splitlines()[-1]), "process_wall_s": wall,
                               "process_cpu_s": usage.ru_utime + usage.ru_stime})
    digests = {r["digest"] for rs in runs.values() for r in rs}
    res: dict = {"same_results": len(digests) == 1, "found": runs["new"][0]["found"]}
    for mode, rs in runs.items():
        res[mode] = {k: round(statistics.median(r[k] for r in rs), 3) for k in rs[0] if k not in ("digest", "found")}
        res[mode]["setup_and_queries_mb"] = round(statistics.median(r["peak_rss_mb"] - r["rss_before_setup_mb"]
                                                                    for r in rs), 1)
    return res


def main(argv: list[str]) -> None:
    if argv[:1] == ["--child"]:
        child(argv[1], argv[2])
        return
    sizes = [int(a) for a in argv] or [100_000, 1_000_000]
    results = json.loads(RESULT.read_text()) if RESULT.exists() else {}
    results.setdefault("sizes", {})
    for n in sizes:
        folder = Path(tempfile.mkdtemp(prefix=f"wave_index_{n}_"))
        try:
            load0 = os.getloadavg()[0]
            entry = build(folder, n)
            entry.update(measure(folder))
            entry.update(load_average=[round(load0, 2), round(os.getloadavg()[0], 2)], code_version=code_version(),
                         date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
            results["sizes"][str(n)] = entry
            print(json.dumps({str(n): entry}, indent=1), flush=True)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    results.update(command="python -m bench.wave_index_scale " + " ".join(map(str, sizes)), radius=T,
                   queries="1000: 500 near copies (0-12 bits flipped) of kept items, 500 random",
                   note="peak_rss_mb is the child's VmHWM after setup and 1000 queries; setup_and_queries_mb "
                        "is that peak less the RSS before setup (imports and queries loaded); medians of "
                        f"{ROUNDS} rounds, old and new alternating")
    results["sizes"] = dict(sorted(results["sizes"].items(), key=lambda kv: int(kv[0])))
    write_result("wave_index_scale", results)


if __name__ == "__main__":
    main(sys.argv[1:])
