"""Reject writer: parquet files with REJECT_SCHEMA, committed atomically, replaced on rerun."""
from __future__ import annotations

from pathlib import Path

import apache_beam as beam
import pyarrow.parquet as pq
from apache_beam.options.pipeline_options import PipelineOptions

from polycap.schemas import REJECT_SCHEMA, Reason, Reject
from polycap.sharding.rejects import WriteRejects, read_rejects


def rejects(n: int, tag: str = "") -> list[Reject]:
    return [Reject(key=f"{i:032x}", source_uri=f"file:///in/{tag}{i}.jpg", stage="decode",
                   reason=Reason.CORRUPT_IMAGE if i % 2 else Reason.TOO_SMALL, detail=f"{tag}{i}",
                   source_name="t") for i in range(n)]


def write(rows: list[Reject], out: Path, argv: list[str] | None = None) -> None:
    with beam.Pipeline(options=PipelineOptions(argv or [])) as p:
        _ = p | beam.Create(rows) | WriteRejects(str(out))


def files(out: Path) -> list[str]:
    return sorted(p.name for p in (out / "rejects").iterdir())


def test_rejects_round_trip_with_the_schema(tmp_path):
    write(rejects(7), tmp_path)
    t = read_rejects(str(tmp_path))
    assert t.schema == REJECT_SCHEMA and t.num_rows == 7
    rows = sorted(t.to_pylist(), key=lambda r: r["key"])
    assert rows[1]["reason"] == "corrupt_image" and rows[0]["reason"] == "too_small"
    assert rows[3]["source_uri"] == "file:///in/3.jpg" and rows[3]["stage"] == "decode"
    assert all(not n.startswith(".") for n in files(tmp_path))
    for n in files(tmp_path):
        assert pq.read_schema(tmp_path / "rejects" / n).equals(REJECT_SCHEMA)


def test_empty_input_commits_one_empty_file(tmp_path):
    write([], tmp_path)
    assert files(tmp_path) == ["rejects-00000.parquet"]
    t = read_rejects(str(tmp_path))
    assert t.num_rows == 0 and t.schema == REJECT_SCHEMA


def test_rerun_replaces_previous_rejects_and_cleans_temps(tmp_path):
    write(rejects(5, "old"), tmp_path)
    (tmp_path / "rejects" / "rejects-00042.parquet").write_bytes(b"stale from an older run")
    (tmp_path / "rejects" / f".part-x.parquet.tmp-{'0' * 32}").write_bytes(b"orphan")
    write(rejects(3, "new"), tmp_path)
    t = read_rejects(str(tmp_path))
    assert sorted(t.column("detail").to_pylist()) == ["new0", "new1", "new2"]
    assert all(n.startswith("rejects-") for n in files(tmp_path))


def test_multi_processing_runner(tmp_path):
    write(rejects(20), tmp_path, ["--direct_running_mode=multi_processing", "--direct_num_workers=2"])
    assert read_rejects(str(tmp_path)).num_rows == 20


def test_read_rejects_of_a_run_without_rejects_dir(tmp_path):
    assert read_rejects(str(tmp_path)).num_rows == 0
