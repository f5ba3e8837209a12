"""Benchmark the urls source: ~500 real photos from a loopback server (own process) -> img/s and peak RSS."""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import resource
import sys
import time
from pathlib import Path

from bench import write_result

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
EVAL = Path(os.environ.get("POLYCAP_EVAL_DIR", REPO.parent / "shared" / "eval"))
N = int(os.environ.get("BENCH_N", "500"))
MAX_FILE = 600_000  # web-sized photos (img2dataset's benchmark images are thumbnails to ~1 MB)


def _serve(q) -> None:
    from tests.transforms.image_server import ImageServer

    with ImageServer({"photos": EVAL / "photos"}) as s:
        q.put(s.base)
        while True:
            time.sleep(3600)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    import apache_beam as beam
    import pyarrow as pa
    import pyarrow.parquet as pq

    from polycap.schemas.config import IngestConfig, SourceConfig
    from polycap.transforms.ingest import ReadSource

    photos = sorted(p for p in (EVAL / "photos").rglob("*") if p.is_file() and p.suffix in (".jpg", ".png")
                    and p.stat().st_size <= MAX_FILE)
    q: mp.Queue = mp.Queue()
    server = mp.Process(target=_serve, args=(q,), daemon=True)
    server.start()
    base = q.get(timeout=30)
    try:
        rel = [p.relative_to(EVAL) for p in photos]
        urls = [f"{base}/{rel[i % len(rel)]}?n={i}" for i in range(N)]  # distinct URLs, real bytes
        total_bytes = sum(photos[i % len(photos)].stat().st_size for i in range(N))
        lst = Path("/tmp/polycap_bench_urls.parquet")
        pq.write_table(pa.table({"url": urls, "caption": [f"photo {i}" for i in range(N)]}), lst)
        cfg = IngestConfig(timeout_s=10, retries=1, concurrency=16, allow_private_addresses=True)   # loopback server
        rss0 = _peak_rss_mb()
        t0 = time.perf_counter()
        with beam.Pipeline() as p:
            samples, rejects = p | ReadSource(SourceConfig(kind="urls", path=str(lst)), cfg)
            n_ok = samples | beam.Map(lambda s: len(s.image.bytes)) | beam.combiners.Count.Globally()
            n_bad = rejects | "CountRejects" >> beam.combiners.Count.Globally()
            (n_ok | "Ok" >> beam.Map(lambda n: Path("/tmp/polycap_bench_ok").write_text(str(n))))
            (n_bad | "Bad" >> beam.Map(lambda n: Path("/tmp/polycap_bench_bad").write_text(str(n))))
        dt = time.perf_counter() - t0
        ok = int(Path("/tmp/polycap_bench_ok").read_text())
        bad = int(Path("/tmp/polycap_bench_bad").read_text())
    finally:
        server.kill()
    result = {
        "what": "ReadSource(kind=urls) on DirectRunner (in-process): parquet list -> HTTP GET -> Sample, "
                "loopback server in a separate process; download only (no decode/resize)",
        "requests": N, "distinct_files": len(photos), "mean_kb": round(total_bytes / N / 1024, 1),
        "concurrency": cfg.concurrency, "ok": ok, "rejected": bad, "seconds": round(dt, 2),
        "img_per_s": round(ok / dt, 1), "mb_per_s": round(total_bytes / dt / 1e6, 1),
        "peak_rss_mb": round(_peak_rss_mb(), 1), "rss_before_pipeline_mb": round(rss0, 1),
        "reference": "img2dataset ~153 img/s at ~860 MB RSS on this machine (an earlier measurement, includes resize; "
                     "bench/results/urls_vs_img2dataset.json is the head-to-head run)",
        "cpus": os.cpu_count(),
    }
    write_result("download", result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
