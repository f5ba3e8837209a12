"""Caption-stage client throughput and per-request client overhead against FakeOpenAIServer.

The fake server (instant, scripted answers) runs in its own process so this process's CPU time is the
client's alone: building the request (base64 of a real JPEG), the HTTP client (the lean one, default, or the
OpenAI SDK), our retry loop, asyncio. Points run interleaved (lean, sdk, lean, sdk ... per setting).
Run: `.venv/bin/python -m bench.caption_client` -> bench/results/caption_client.json
"""
from __future__ import annotations

import io
import json
import multiprocessing as mp
import os
import platform
import sys
import threading
import time
from pathlib import Path

from bench import write_result

PLAN = ((1, 150), (8, 300), (64, 400), (256, 800))   # (concurrency, requests) per loop mode
LOOPS = ("thread", "run")
CLIENTS = ("lean", "sdk")


def _serve(queue, stop) -> None:
    from tests.fakes.openai_server import FakeOpenAIServer

    with FakeOpenAIServer() as srv:
        queue.put((srv.url, os.getpid()))
        stop.wait()


def _proc_cpu_s(pid: int) -> float:
    """utime + stime of a process from /proc (Linux), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _photo_jpeg() -> bytes:
    """A real photo as the pipeline would send it (skimage's bundled astronaut, 512x512 JPEG q90)."""
    from PIL import Image
    from skimage import data

    buf = io.BytesIO()
    Image.fromarray(data.astronaut()).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _requests(n: int, image: bytes):
    from polycap.transforms.backends.base import GenRequest

    prompt = "Describe this image in detail: objects, counts, spatial relations, visible text, style."
    return [GenRequest(f"k{i:05d}", [{"role": "user", "content": [{"type": "image"},
                                                                  {"type": "text", "text": f"{prompt} #{i}"}]}],
                       images=(image,), params={"max_tokens": 1024, "temperature": 0.0, "seed": i})
            for i in range(n)]


def run_point(url: str, server_pid: int, loop: str, concurrency: int, n: int, image: bytes,
              client: str = "lean") -> dict:
    from polycap.schemas.config import EndpointConfig
    from polycap.transforms.backends.gen_openai import OpenAIBackend

    spec = EndpointConfig("openai", model="fake-vlm", endpoint=url, api_key_env="", concurrency=concurrency,
                          timeout_s=30, options={"loop": loop, "client": client})
    backend = OpenAIBackend(spec)
    batch = max(8, 2 * concurrency)  # what RunInference would hand over per call
    reqs = _requests(n, image)
    backend.generate(reqs[:batch])   # warm-up: connections, SDK imports
    cpu0, srv0, t0 = time.process_time(), _proc_cpu_s(server_pid), time.perf_counter()
    results = []
    for start in range(0, n, batch):
        results.extend(backend.generate(reqs[start:start + batch]))
    wall = time.perf_counter() - t0
    cpu, srv = time.process_time() - cpu0, _proc_cpu_s(server_pid) - srv0
    backend.close()
    return {"client": client, "loop": loop, "concurrency": concurrency, "batch_size": batch, "requests": n,
            "errors": sum(r.error is not None for r in results),
            "duplicates": n - len({r.key for r in results}),
            "wall_s": round(wall, 3), "requests_per_s": round(n / wall, 1),
            "client_cpu_ms_per_request": round(1000 * cpu / n, 3),
            "server_cpu_ms_per_request": round(1000 * srv / n, 3)}


def one_point(argv: list[str]) -> None:
    """`--url URL --client lean|sdk --concurrency N --requests M`: one point against a server already up, for
    timing whole client processes from outside (startup included); `--serve` starts such a server."""
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--serve", action="store_true")
    ap.add_argument("--url")
    ap.add_argument("--client", default="lean")
    ap.add_argument("--loop", default="thread")
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--requests", type=int, default=2000)
    args = ap.parse_args(argv)
    if args.serve:
        from tests.fakes.openai_server import FakeOpenAIServer

        with FakeOpenAIServer() as srv:
            print(srv.url, flush=True)
            threading.Event().wait()
    point = run_point(args.url, os.getpid(), args.loop, args.concurrency, args.requests, _photo_jpeg(),
                      args.client)
    print(json.dumps({k: v for k, v in point.items() if not k.startswith("server")}))


def main() -> None:
    if len(sys.argv) > 1:
        one_point(sys.argv[1:])
        return
    ctx = mp.get_context("spawn")
    queue, stop = ctx.Queue(), ctx.Event()
    server = ctx.Process(target=_serve, args=(queue, stop), daemon=True)
    server.start()
    url, pid = queue.get(timeout=60)
    image = _photo_jpeg()
    points = []
    load_before = round(os.getloadavg()[0], 1)
    try:
        for loop in LOOPS:
            for concurrency, n in PLAN:
                for client in CLIENTS:
                    point = run_point(url, pid, loop, concurrency, n, image, client)
                    print(json.dumps(point), flush=True)
                    points.append(point)
    finally:
        stop.set()
        server.join(timeout=10)
    out = {"bench": "caption_client", "what": "OpenAIBackend against FakeOpenAIServer (instant replies, "
           "separate process), one real 512x512 JPEG per request, ~800-char answers; client lean (default) "
           "and sdk (the openai package) in turn at each setting",
           "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus (shared)",
           "load_avg_1m_at_start": load_before, "load_avg_1m_at_end": round(os.getloadavg()[0], 1),
           "lean_over_sdk_cpu": {f"{a['loop']}/{a['concurrency']}": round(
               a["client_cpu_ms_per_request"] / b["client_cpu_ms_per_request"], 3)
               for a, b in zip(points[::2], points[1::2])},
           "note": "wall-clock rates on a shared 2-core box are noisy; client_cpu_ms_per_request is the "
                   "robust number (1000 / it = requests/s one client core can drive)",
           "image_bytes": len(image), "points": points}
    print(f"wrote {write_result('caption_client', out)}")


if __name__ == "__main__":
    main()
