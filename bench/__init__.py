"""Benchmarks; results in bench/results/*.json."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def write_result(name: str, data: dict[str, Any], indent: int = 2) -> Path:
    """Write `bench/results/<name>.json` (UTF-8, non-ASCII kept) and return its path."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(data, indent=indent, ensure_ascii=False) + "\n", encoding="utf-8")
    return path
