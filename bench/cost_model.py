"""Per-record sizes behind the cost model in ARCHITECTURE.md ("Cost at 100M images"): what each shuffle,
commit and object-store request carries per image, measured on the real photos in ../shared/eval/photos.

Writes bench/results/cost_model.json. Run: .venv/bin/python -m bench.cost_model
"""
from __future__ import annotations

import hashlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    from apache_beam.coders import FastPrimitivesCoder

    from polycap.pipelines.run import run
    from polycap.schemas import Hashes, ImageInfo, Sample, Source
    from polycap.schemas.config import DecodeConfig, load_config
    from polycap.sharding import fs
    from polycap.transforms.decode import decode_and_stage
    from polycap.transforms.dedup import to_member

    photos = sorted(p for p in (REPO.parent / "shared" / "eval" / "photos").rglob("*")
                    if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp"))
    coder = FastPrimitivesCoder()
    raw, staged, members, jpeg = [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for p in photos:
            data = p.read_bytes()
            sha = hashlib.sha256(data).hexdigest()
            s = Sample(key=sha[:32], source=Source(name="eval", uri=str(p), kind="dir", orig_caption="A photo."),
                       image=ImageInfo(bytes=data), hashes=Hashes(sha256=sha))
            out = decode_and_stage(s, DecodeConfig(), f"{tmp}/_staging/r")
            if not isinstance(out, Sample):
                continue
            raw.append(len(coder.encode(s)))
            staged.append(len(coder.encode(out)))
            jpeg.append(len(fs.read_bytes(out.image.ref)))
            m = to_member(out)
            if m is not None:
                members.append(len(coder.encode(m)))
        src = Path(tmp) / "src"
        src.mkdir()
        for i in range(4):   # 4 distinct copies of each photo: enough rows for per-row file sizes
            for p in photos:
                (src / f"{i}_{p.name}").write_bytes(p.read_bytes() + bytes([i]) * i)
        outdir = Path(tmp) / "out"
        t = time.time()
        stats = run(load_config(data={"sources": [{"kind": "dir", "path": str(src)}], "output": str(outdir),
                                      "dedup": {"near": False}, "shards": {"max_samples": 50}}))
        wall = time.time() - t
        manifest = (outdir / "manifest.parquet").stat().st_size
        rejects = sum(f.stat().st_size for f in (outdir / "rejects").glob("*/*.parquet"))
        stats_file = (outdir / "_stats" / "train.json").stat().st_size
    res = {
        "photos": len(raw),
        "record_bytes_with_image_mean": round(statistics.mean(raw)),
        "record_bytes_staged_mean": round(statistics.mean(staged)),
        "record_bytes_staged_max": max(staged),
        "staged_jpeg_bytes_mean": round(statistics.mean(jpeg)),
        "near_member_bytes_mean": round(statistics.mean(members)) if members else None,
        "run": {"inputs": stats["inputs"], "kept": stats["kept"], "rejected": stats["rejected"],
                "shards": stats["shards"], "wall_s": round(wall, 2)},
        "manifest_bytes_per_row": round(manifest / max(stats["kept"], 1), 1),
        "rejects_bytes_total": rejects,
        "stats_file_bytes": stats_file,
    }
    path = REPO / "bench" / "results" / "cost_model.json"
    path.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
