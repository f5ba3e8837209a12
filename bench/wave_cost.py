"""What a wave costs besides its images: a local run in waves of 1000 (pipelines/waves.py) against the same run in
one graph, and against the same waves run by an earlier commit, at 3k inputs; plus where each wave's fixed time
goes (graph construction, translation to the runner's form, runner start-up, fork, listing slice, index commit).

Inputs: bench/pipeline_memory.py's 96x96 distinct JPEGs with ~1 % exact and ~0.5 % recompressed copies, near
dedup on, shards of 1000. Each comparison runs the two commands in turn (A B A B ..., after one warm-up each),
as whole processes (`polycap run ... --progress 0`), each run's wall time and CPU time (user + sys of the run and
its forked waves, from getrusage of the children); medians and the median of the per-pair ratios are reported.
`--base REV` lays that commit's package out in a temporary folder (as a wheel installs it) and runs it from
there, so before and after run side by side on the same inputs and the same load. `--phases` runs the current
code once more in waves with timers around each step of every wave (no profiler).
Run: `python -m bench.wave_cost [--base REV] [--rounds N] [--phases] [--inputs N]`; writes
bench/results/wave_cost.json (keeping the entries it does not remeasure).
"""
from __future__ import annotations

import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import write_result
from bench.pipeline_memory import make_input
from polycap.pipelines.run import code_version

REPO = Path(__file__).resolve().parents[1]
RESULT = REPO / "bench" / "results" / "wave_cost.json"
SUBPACKAGES = ("configs", "pipelines", "prompts", "schemas", "sharding", "trainer", "transforms")


def layout_rev(rev: str, dest: Path) -> str:
    """`dest/polycap/...` holding commit `rev`'s package as installed; returns the commit's short name."""
    src = dest / "src"
    src.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
    shutil.copytree(src / "polycap", dest / "polycap")
    for name in SUBPACKAGES:
        if (src / name).is_dir():
            shutil.copytree(src / name, dest / "polycap" / name)
    return subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", rev], capture_output=True, text=True,
                          check=True).stdout.strip()


def _job(work: Path, name: str, src: Path) -> Path:
    cfg = work / f"{name}.json"
    cfg.write_text(json.dumps({"sources": [{"kind": "dir", "path": str(src)}], "output": str(work / f"out_{name}"),
                               "dedup": {"near": True}, "shards": {"max_samples": 1000}}))
    return cfg


def timed_run(cfg: Path, wave_size: int, pythonpath: str | None = None) -> dict:
    """One whole `polycap run`: wall and CPU seconds (the run and its forked waves)."""
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath          # before the editable install's finder, which comes last
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "polycap.pipelines.cli", "run", str(cfg), "--progress", "0",
                           "--wave-size", str(wave_size)], cwd=tempfile.gettempdir(), env=env,
                          capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    return {"wall_s": round(wall, 3),
            "cpu_s": round(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime, 3)}


def interleaved(a: tuple[Path, int, str | None], b: tuple[Path, int, str | None], rounds: int) -> dict:
    """A and B in turn, one warm-up each, `rounds` counted pairs: medians and per-pair ratio medians."""
    timed_run(*a)
    timed_run(*b)
    runs_a, runs_b = [], []
    for _ in range(rounds):
        runs_a.append(timed_run(*a))
        runs_b.append(timed_run(*b))

    def med(runs: list[dict], key: str) -> float:
        return round(statistics.median(r[key] for r in runs), 3)

    return {"a": runs_a, "b": runs_b,
            "median_wall_s": {"a": med(runs_a, "wall_s"), "b": med(runs_b, "wall_s")},
            "median_cpu_s": {"a": med(runs_a, "cpu_s"), "b": med(runs_b, "cpu_s")},
            "ratio_a_b": {k: round(statistics.median(x[k] / y[k] for x, y in zip(runs_a, runs_b)), 3)
                          for k in ("wall_s", "cpu_s")}}


def phases_main(argv: list[str]) -> None:
    """In a `polycap run` process: time the steps of every wave (printed as `PHASES <json>` lines)."""
    import apache_beam as beam
    from apache_beam.runners.portability.fn_api_runner import fn_runner

    from polycap.pipelines import run as run_mod
    from polycap.pipelines import waves
    from polycap.pipelines.cli import main

    spent: dict[str, float] = {}

    def timer(name, fn):
        def timed(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                spent[name] = spent.get(name, 0.0) + time.perf_counter() - t
        return timed

    run_mod.build_pipeline = timer("build_graph", run_mod.build_pipeline)
    beam.Pipeline.to_runner_api = timer("to_runner_api", beam.Pipeline.to_runner_api)
    beam.Pipeline.run = timer("pipeline_run", beam.Pipeline.run)
    fn_runner.FnApiRunner.run_stages = timer("run_stages", fn_runner.FnApiRunner.run_stages)
    waves.read_slice = timer("read_slice", waves.read_slice)
    waves._finish_wave = timer("commit_to_index", waves._finish_wave)
    in_child = waves.in_child

    def in_child_timed(work, what, resume_hint=True, **kw):
        forked = time.perf_counter()

        def child():
            t = time.perf_counter()
            spent.clear()
            spent["fork"] = t - forked
            try:
                work()
            finally:
                spent["child"] = time.perf_counter() - t
                print("PHASES " + json.dumps({"what": what, **{k: round(v, 3) for k, v in spent.items()}}),
                      file=sys.stderr, flush=True)
        in_child(child, what, resume_hint, **kw)
    waves.in_child = in_child_timed
    sys.argv = ["polycap", *argv]
    main()


def phases(cfg: Path) -> list[dict]:
    proc = subprocess.run([sys.executable, "-m", "bench.wave_cost", "--in-run", "run", str(cfg), "--progress", "0",
                           "--wave-size", "1000"], cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    rows = [json.loads(line[len("PHASES "):]) for line in proc.stderr.splitlines() if line.startswith("PHASES ")]
    for r in rows:       # what Pipeline.run spends outside translation and the stages: the runner's start-up
        r["runner_start"] = round(r["pipeline_run"] - r["to_runner_api"] - r["run_stages"], 3)
    return rows


def main(argv: list[str]) -> dict:
    rounds = int(argv[argv.index("--rounds") + 1]) if "--rounds" in argv else 3
    n = int(argv[argv.index("--inputs") + 1]) if "--inputs" in argv else 3000
    base = argv[argv.index("--base") + 1] if "--base" in argv else None
    previous = json.loads(RESULT.read_text()) if RESULT.exists() else {}
    entries = dict(previous.get("entries") or {})
    version = code_version()
    work = Path(tempfile.mkdtemp(prefix="polycap-wavecost-"))
    try:
        made = make_input(work / "in", n)
        load0 = [round(x, 2) for x in os.getloadavg()]
        waves_a, one_b = (_job(work, "waves", work / "in"), 1000, None), (_job(work, "one", work / "in"), 0, None)
        res = interleaved(waves_a, one_b, rounds)
        entries[f"waves_1000_vs_one_graph/{n}"] = {
            "a": "waves of 1000 (--wave-size 1000)", "b": "one graph in process (--wave-size 0)",
            "code_version": version, "input": made, "load_avg_before": load0,
            "load_avg_after": [round(x, 2) for x in os.getloadavg()], **res}
        print(json.dumps(entries[f"waves_1000_vs_one_graph/{n}"]["ratio_a_b"]), file=sys.stderr, flush=True)
        if base:
            short = layout_rev(base, work / "base")
            load0 = [round(x, 2) for x in os.getloadavg()]
            res = interleaved(waves_a, (_job(work, "base", work / "in"), 1000, str(work / "base")), rounds)
            entries[f"waves_1000_vs_base/{n}"] = {
                "a": f"waves of 1000, {version}", "b": f"waves of 1000, commit {short}", "code_version": version,
                "base": short, "input": made, "load_avg_before": load0,
                "load_avg_after": [round(x, 2) for x in os.getloadavg()], **res}
            print(json.dumps(entries[f"waves_1000_vs_base/{n}"]["ratio_a_b"]), file=sys.stderr, flush=True)
        if "--phases" in argv:
            shutil.rmtree(work / "out_waves", ignore_errors=True)
            entries[f"phases_waves_1000/{n}"] = {"code_version": version, "load_avg": [round(x, 2) for x in
                                                                                     os.getloadavg()],
                                                 "waves": phases(waves_a[0])}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {
        "what": "a local run in waves of 1000 against one graph and against an earlier commit's waves, same "
                "inputs, interleaved whole-process runs (A B A B ..., one warm-up each); per-wave phase times",
        "entries": entries,
        "note": "2-core machine shared with other jobs: compare ratios taken in one call, not absolute seconds "
                "across calls; cpu_s is user+sys of the run and its forked waves",
    }
    write_result("wave_cost", result)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] == ["--in-run"]:
        phases_main(args[1:])
    elif "--help" in args or "-h" in args:
        print(__doc__)
    else:
        main(args)
