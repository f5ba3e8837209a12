"""`polycap translate` throughput: a 5,000-record LLaVA file against an instant OpenAI-compatible server.

The server (tests/fakes FakeOpenAIServer answering with the fake word-mapping translator, so the gates pass)
runs in its own process; `polycap translate` runs as a child process, and its CPU time (user + sys of the
whole child tree, from the kernel's accounting) is the client's alone. `records_per_cpu_s` is the rate one
core of client CPU sustains (the issue's "records/s per core"); wall-clock rates on a shared box are noisy.
Run: `.venv/bin/python -m bench.translate_client [--records N] [--to ko,vi] [--rounds R]`
-> bench/results/translate_client.json
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import random
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench import write_result

WORK = Path(__file__).parent / "work" / "translate_client"
# DIAGNOSTIC (--stub-gates): every answer passes the quality gates and span checks unexamined, to split the
# CPU per record into "the gates" and "everything else"; never a real translation run.
STUB_GATES = ("import sys, polycap.transforms.translate as tr; tr.first_failure = lambda *a, **k: None; "
              "tr.compare_spans = lambda *a, **k: None; from polycap.pipelines.cli import main; sys.exit(main())")
QUESTIONS = ("What is shown in this picture?", "Describe the image in detail.",
             "How many objects can you count, and where are they?", "What is the weather like in this scene?",
             "Is there any readable text in the image?", "What mood does the photograph convey?")


def _fake_translation(body: dict[str, Any]) -> str:
    from tests.fakes.fake_translator import fake_translate, target_of

    msgs = body.get("messages", [])
    system = next((m["content"] for m in msgs if m.get("role") == "system"), "")
    text = next((m["content"] for m in msgs if m.get("role") == "user"), "")
    return fake_translate(text, target_of(system))


def _serve(queue, stop) -> None:
    from tests.fakes.openai_server import FakeOpenAIServer

    with FakeOpenAIServer(responder=_fake_translation, model="fake-mt") as srv:
        queue.put((srv.url, os.getpid()))
        stop.wait()


def _proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def llava_records(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """LLaVA-Instruct-shaped records: an `<image>` question from a few templates (as LLaVA's detail
    prompts), a 3-5 sentence English answer, and half the time a follow-up turn whose question quotes one
    sentence; answers are drawn from the fake server's caption sentences, so they are varied English and
    nearly all distinct (85k+ combinations), as real answers are."""
    from tests.fakes.openai_server import _POOLS

    rng = random.Random(seed)
    sentences = [s for pool in _POOLS for s in pool]
    records = []
    for i in range(n):
        conv = []
        for turn in range(1 + (i % 2)):
            q = f"<image>\n{rng.choice(QUESTIONS)}" if turn == 0 else f"Why do you say: {rng.choice(sentences)}"
            conv.append({"from": "human", "value": q})
            conv.append({"from": "gpt", "value": " ".join(rng.sample(sentences, rng.randint(3, 5)))})
        records.append({"id": f"{i:07d}", "image": f"coco/train2017/{i:012d}.jpg", "conversations": conv})
    return records


def run_once(url: str, server_pid: int, src: Path, langs: str, sets: list[str],
             launcher: str = "", stub_gates: bool = False) -> dict[str, Any]:
    out = WORK / "out"
    shutil.rmtree(out, ignore_errors=True)   # no cache from an earlier round
    entry = [launcher] if launcher else ["-c", STUB_GATES] if stub_gates else ["-m", "polycap.pipelines.cli"]
    cmd = [sys.executable, *entry, "translate", str(src), "--to", langs, "--out", str(out),
           "--set", "backend=openai", "--set", f"endpoint={url}", "--set", "model=fake-mt",
           "--set", "api_key_env=", *[a for s in sets for a in ("--set", s)]]
    before, srv0, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), _proc_cpu_s(server_pid), time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    wall = time.perf_counter() - t0
    after, srv = resource.getrusage(resource.RUSAGE_CHILDREN), _proc_cpu_s(server_pid) - srv0
    if res.returncode != 0:
        raise SystemExit(f"polycap translate failed (rc {res.returncode}):\n{res.stderr[-3000:]}")
    stats = json.loads(res.stdout[res.stdout.index("{"):])
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    n = stats["inputs"]
    return {"records": n, "langs": langs, "kept": {k: v.get("kept") for k, v in stats.get("langs", {}).items()},
            "requests": stats.get("requests"), "cache_hits": stats.get("cache_hits"),
            "wall_s": round(wall, 2), "client_cpu_s": round(cpu, 2), "server_cpu_s": round(srv, 2),
            "records_per_s": round(n / wall, 1), "records_per_cpu_s": round(n / cpu, 1),
            "client_cpu_ms_per_request": round(1000 * cpu / max(1, stats.get("requests") or 0), 3)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=5000)
    ap.add_argument("--to", default="ko")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--set", action="append", default=[], help="extra translate.* overrides (a=b)")
    ap.add_argument("--no-write", action="store_true", help="print only; leave the results file alone")
    ap.add_argument("--launcher", default="", help="a Python script to run instead of `-m polycap.pipelines.cli` "
                    "(e.g. one that imports polycap from another checkout, for a before/after figure)")
    ap.add_argument("--no-diagnostic", action="store_true",
                    help="skip the rounds with the gates stubbed (STUB_GATES), run in turn with the real ones")
    args = ap.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    src = WORK / f"llava_{args.records}.json"
    if not src.exists():
        src.write_text(json.dumps(llava_records(args.records), ensure_ascii=False))
    ctx = mp.get_context("spawn")
    queue, stop = ctx.Queue(), ctx.Event()
    server = ctx.Process(target=_serve, args=(queue, stop), daemon=True)
    server.start()
    url, pid = queue.get(timeout=60)
    rounds = []
    modes = ("real",) if args.no_diagnostic else ("real", "gates_stubbed")
    load_before = round(os.getloadavg()[0], 1)
    try:
        for _ in range(args.rounds):
            for mode in modes:
                point = {"mode": mode, **run_once(url, pid, src, args.to, args.set, args.launcher,
                                                  mode == "gates_stubbed")}
                print(json.dumps(point), flush=True)
                rounds.append(point)
    finally:
        stop.set()
        server.join(timeout=10)

    def median(mode: str, name: str) -> float:
        values = sorted(r[name] for r in rounds if r["mode"] == mode)
        return values[len(values) // 2]
    out = {"bench": "translate_client",
           "what": f"`polycap translate` (CLI, DirectRunner) on a {args.records}-record LLaVA JSON file, --to "
                   f"{args.to}, backend openai against FakeOpenAIServer (instant fake translations, separate "
                   "process), no cache from earlier rounds",
           "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus (shared)",
           "load_avg_1m_at_start": load_before, "load_avg_1m_at_end": round(os.getloadavg()[0], 1),
           "sets": args.set, "launcher": args.launcher,
           "note": "records_per_cpu_s = records / client CPU seconds (whole child process tree, start-up "
                   "included): the rate one client core sustains; the goal is >= 200. gates_stubbed rounds are a "
                   "DIAGNOSTIC (every answer passes the translate gates and span checks unexamined): their CPU "
                   "minus the real rounds' is what the gates cost",
           "median_records_per_cpu_s": {m: median(m, "records_per_cpu_s") for m in modes},
           "median_client_cpu_s": {m: median(m, "client_cpu_s") for m in modes},
           "rounds": rounds}
    if not args.no_write:
        print(f"wrote {write_result('translate_client', out)}")


if __name__ == "__main__":
    main()
