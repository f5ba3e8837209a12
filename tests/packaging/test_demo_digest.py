"""The demo input gives byte-identical shards to the checked-in manifest (recorded before the restructure)."""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq

from polycap.pipelines.demo import DEMO_CONFIG, build_sample
from polycap.pipelines.run import run
from polycap.schemas.config import load_config

EXPECTED = Path(__file__).with_name("demo_manifest.json")


def test_demo_shards_match_the_checked_in_manifest(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)                      # the demo config's paths are relative: out/demo-input
    monkeypatch.delenv("POLYCAP_CAPTION_ENDPOINT", raising=False)
    cfg = load_config(DEMO_CONFIG, ["ocr.enabled=false"])
    build_sample(Path(cfg.sources[0].path))
    stats = run(cfg, [], config_path=str(DEMO_CONFIG))
    assert stats["balanced"]
    rows = pq.read_table(Path(cfg.output) / "manifest.parquet").to_pylist()
    got = sorted([r["key"], r["split"], r["shard"], r["shard_sha256"], r["shard_samples"]] for r in rows)
    assert got == json.loads(EXPECTED.read_text())["rows"]
