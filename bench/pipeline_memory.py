"""Peak memory of `polycap run` (the whole process tree) against the input count, in the local mode the README
recommends (DirectRunner in memory, waves on: pipelines/waves.py). In that mode every run goes through the
same launcher: inputs above `run.wave_size` run in waves, one forked child per wave, and inputs that fit in one
wave (the 1k run) run as one graph in one forked child, so 1k and 100k are measured in the same mode.

Goal: the peak at 100k inputs within 10 % of the peak at 1k. Inputs are small distinct JPEGs (96x96, an 8x8
grid of random colours upscaled, so every pHash differs) in folders of 1000, plus ~1 % byte-identical copies
and ~0.5 % recompressed copies (near duplicates) spread over the run, so exact and near dedup work across
waves. Peak tree memory: the sum of PSS (proportional set size, /proc/PID/smaps_rollup) over the run's
process and its children, sampled every 0.05 s; each wave is a forked child sharing the launcher's pages, which
a sum of RSS would count twice (recorded too, as peak_tree_rss_sum_mb), as is each process's own VmHWM.
The tree's PSS of anonymous memory and of mapped files are recorded apart too (each its own peak,
peak_tree_pss_anon_mb and peak_tree_pss_file_mb): the file part is the tree's share of library pages, which
drops while other processes map the same files, so on a shared machine it moves by tens of MB between runs
and a long run's peak catches its highest point (1k runs: 30-56 MB of the tree's peak; 10k: 78 MB).
The launcher's own PSS (peak_launcher_pss_mb; alone, between waves: peak_launcher_alone_pss_mb) and the
children's (peak_children_pss_mb) are recorded apart, with the code version each run measured.
Run: `python -m bench.pipeline_memory [N ...]` (default 1000 10000 100000); `--one-graph` measures the single
Beam graph (`--wave-size 0`) instead, `--wave-size N` waves of N; `--urls` serves the same files on 127.0.0.1
and reads them from a parquet URL list instead of the folders. Writes bench/results/pipeline_memory.json
(keeping the other sizes and modes it already holds).
"""
from __future__ import annotations

import io
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

from bench import write_result
from polycap.pipelines.run import code_version
from polycap.schemas.config import RunConfig

REPO = Path(__file__).resolve().parents[1]
RESULT = REPO / "bench" / "results" / "pipeline_memory.json"


def _jpeg(rng: random.Random, quality: int = 90) -> tuple[bytes, Image.Image]:
    im = Image.frombytes("RGB", (8, 8), bytes(rng.randrange(256) for _ in range(192)))
    im = im.resize((96, 96), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    return buf.getvalue(), im


def make_input(dest: Path, n: int, seed: int = 0) -> dict:
    """n files in folders of 1000: distinct images, ~1 % exact copies and ~0.5 % recompressed copies of an
    earlier image (any earlier folder, so across waves)."""
    rng = random.Random(seed)
    recent: list[tuple[bytes, Image.Image]] = []
    exact = near = 0
    for i in range(n):
        folder = dest / f"{i // 1000:05d}"
        if i % 1000 == 0:
            folder.mkdir(parents=True)
        r = rng.random()
        if recent and r < 0.01:
            data, _ = rng.choice(recent)
            exact += 1
        elif recent and r < 0.015:
            buf = io.BytesIO()
            rng.choice(recent)[1].save(buf, "JPEG", quality=70)
            data = buf.getvalue()
            near += 1
        else:
            data, im = _jpeg(rng)
            if len(recent) < 500:
                recent.append((data, im))
            elif rng.random() < 0.01:
                recent[rng.randrange(500)] = (data, im)
        (folder / f"{i:07d}.jpg").write_bytes(data)
    return {"files": n, "exact_copies": exact, "recompressed_copies": near}


def _tree(pid: int) -> list[int]:
    """pid and its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(d))
    out, stack = [], [pid]
    while stack:
        p = stack.pop()
        out.append(p)
        stack.extend(children.get(p, []))
    return out


def _status_kb(pid: int, field: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _pss_kb(pid: int) -> int:
    """Proportional set size: shared pages (a forked wave shares the launcher's imports) counted once."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _pss_parts_kb(pid: int) -> tuple[int, int]:
    """(Pss_Anon, Pss_File) of a process: its private memory, and its share of mapped files (libraries), which
    falls as other processes on the machine map the same files (another Python of the same environment)."""
    anon = file = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss_Anon:"):
                    anon = int(line.split()[1])
                elif line.startswith("Pss_File:"):
                    file = int(line.split()[1])
    except OSError:
        pass
    return anon, file


def run_once(src: Path, out: Path, wave_args: list[str], url_list: Path | None = None) -> dict:
    cfg = out.parent / f"{out.name}.json"
    source = {"kind": "urls", "path": str(url_list)} if url_list else {"kind": "dir", "path": str(src)}
    cfg.write_text(json.dumps({"sources": [source], "output": str(out), "dedup": {"near": True},
                               "shards": {"max_samples": 1000},
                               # the image server is on loopback, which URL ingest refuses unless allowed
                               "ingest": {"allow_private_addresses": bool(url_list)}}))
    load0 = os.getloadavg()
    t0 = time.time()
    proc = subprocess.Popen([sys.executable, "-m", "polycap.pipelines.cli", "run", str(cfg), "--progress", "0",
                             *wave_args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak_tree, peak_rss, hwm, samples = 0, 0, {}, 0
    peak_launcher = peak_children = peak_alone = 0
    peak_anon = peak_file = 0
    while proc.poll() is None:
        pids = _tree(proc.pid)
        pss = {p: _pss_kb(p) for p in pids}
        children = sum(v for p, v in pss.items() if p != proc.pid)
        peak_tree = max(peak_tree, sum(pss.values()))
        parts = [_pss_parts_kb(p) for p in pids]
        peak_anon, peak_file = max(peak_anon, sum(a for a, _ in parts)), max(peak_file, sum(f for _, f in parts))
        peak_launcher, peak_children = max(peak_launcher, pss[proc.pid]), max(peak_children, children)
        if len(pids) == 1:                    # no wave child: the launcher's own pages, shared with no one
            peak_alone = max(peak_alone, pss[proc.pid])
        peak_rss = max(peak_rss, sum(_status_kb(p, "VmRSS") for p in pids))
        for p in pids:
            hwm[p] = max(hwm.get(p, 0), _status_kb(p, "VmHWM"))
        samples += 1
        time.sleep(0.05)
    stdout, stderr = proc.communicate()
    wall = time.time() - t0
    if proc.returncode != 0:
        raise RuntimeError(stderr[-3000:])
    stats = json.loads((out / "_stats" / "train.json").read_text())
    assert stats["balanced"], stats
    return {"inputs": stats["inputs"], "kept": stats["kept"], "rejected_by_reason": stats["rejected_by_reason"],
            "waves": stats.get("waves", 1), "shards": stats["shards"], "wall_s": round(wall, 1),
            "peak_tree_pss_mb": round(peak_tree / 1024, 1), "peak_tree_rss_sum_mb": round(peak_rss / 1024, 1),
            "peak_launcher_pss_mb": round(peak_launcher / 1024, 1),
            "peak_launcher_alone_pss_mb": round(peak_alone / 1024, 1),
            "peak_children_pss_mb": round(peak_children / 1024, 1),
            "peak_tree_pss_anon_mb": round(peak_anon / 1024, 1), "peak_tree_pss_file_mb": round(peak_file / 1024, 1),
            "max_process_hwm_mb": round(max(hwm.values(), default=0) / 1024, 1),
            "sum_process_hwm_mb": round(sum(hwm.values()) / 1024, 1), "rss_samples": samples,
            "code_version": code_version(),
            "load_avg_before": [round(x, 2) for x in load0],
            "load_avg_after": [round(x, 2) for x in os.getloadavg()]}


def serve_list(root: Path, dest: Path) -> subprocess.Popen:
    """Serve `root` on 127.0.0.1 in its own process and write a parquet URL list of every file under it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from bench.urls_vs_img2dataset import start_server

    srv, base = start_server(root)
    rels = sorted(str(p.relative_to(root)) for p in root.rglob("*.jpg"))
    pq.write_table(pa.table({"url": [f"{base}/img/{r}" for r in rels],
                             "caption": [f"a small picture, number {i}" for i in range(len(rels))]}), dest)
    return srv


def main(sizes: list[int], one_graph: bool = False, wave_size: int | None = None, urls: bool = False) -> dict:
    mode = "one_graph" if one_graph else "waves_default" if wave_size is None else f"waves_{wave_size}"
    mode = f"urls_{mode}" if urls else mode
    wave_args = ["--wave-size", "0"] if one_graph else [] if wave_size is None else ["--wave-size", str(wave_size)]
    previous = json.loads(RESULT.read_text()) if RESULT.exists() else {}
    runs = {k: v for k, v in (previous.get("runs") or {}).items()}
    for n in sizes:
        work = Path(tempfile.mkdtemp(prefix="polycap-mem-"))
        try:
            t0 = time.time()
            made = make_input(work / "in", n)
            made["make_s"] = round(time.time() - t0, 1)
            srv = serve_list(work / "in", work / "list.parquet") if urls else None
            try:
                res = run_once(work / "in", work / "out", wave_args, work / "list.parquet" if urls else None)
            finally:
                if srv is not None:
                    srv.kill()
            res["input"] = made
            runs[f"{mode}/{n}"] = res
            print(json.dumps({f"{mode}/{n}": res}), file=sys.stderr, flush=True)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    base = runs.get("waves_default/1000")
    ratios = {k: round(v["peak_tree_pss_mb"] / base["peak_tree_pss_mb"], 3)
              for k, v in runs.items() if base and k.startswith("waves_default/")}
    big = runs.get("waves_default/100000")
    result = {
        "goal": "peak tree PSS at 100k inputs within 10 % of the peak at 1k, default (waves) local mode",
        "default_wave_size": RunConfig().wave_size,
        "runs": runs, "peak_ratio_to_1k": ratios,
        "meets_goal": bool(big and base and big["peak_tree_pss_mb"] <= 1.1 * base["peak_tree_pss_mb"]),
        "note": "DirectRunner in memory; 2-core machine shared with other jobs (load averages per run); "
                "peak_tree_pss_mb (the goal's measure) and peak_tree_rss_sum_mb sampled every 0.05 s; "
                "peak_tree_pss_anon_mb / peak_tree_pss_file_mb: the tree's anonymous and file-backed PSS, each "
                "its own peak (the file part falls while other processes map the same libraries); "
                "max_process_hwm_mb is the kernel's per-process peak; waves_default/* ran with the default wave size "
                "of their code_version (1k: one graph in a forked child since the launcher runs every local run), "
                "waves_N/* with --wave-size N, one_graph/* with --wave-size 0 (in process, no launcher), urls_* from "
                "a parquet URL list served on 127.0.0.1",
    }
    write_result("pipeline_memory", result)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    argv = sys.argv[1:]
    if "--help" in argv or "-h" in argv:
        print(__doc__)
        sys.exit(0)
    size = int(argv.pop(argv.index("--wave-size") + 1)) if "--wave-size" in argv else None   # another wave size
    args = [a for a in argv if not a.startswith("--")]
    main([int(a) for a in args] or [1000, 10000, 100000], one_graph="--one-graph" in argv, wave_size=size,
         urls="--urls" in argv)
