"""Live progress of `polycap translate` (file and shard inputs): plain lines on a non-terminal every interval,
counts that only grow, kept / rejected summed over the languages, the last line equal to `_stats.json`'s totals,
and no `_progress/` left in OUT."""
from __future__ import annotations

import json
import re
from pathlib import Path

from typer.testing import CliRunner

from polycap.pipelines.cli import app
from tests.fakes.fake_translator import FAKE  # deterministic TEST backend, not a model
from tests.pipelines.test_translate_shards import FAIL, _inputs
from tests.sharding.conftest import run_write

LINE = re.compile(r"inputs (\d+)(?:/(\d+))? \([\d.]+/s\), kept (\d+), rejected (\d+) \(summed over 2 languages\)")


def _translate(src: Path, out: Path):
    res = CliRunner().invoke(app, ["translate", str(src), "--to", "ko,vi", "--out", str(out), "--progress", "0.2",
                                   "--set", f"backend={FAKE}", "--set", "model=fake"])
    assert res.exit_code == 0, res.output
    return res


def _progress(res) -> tuple[list[tuple[int, int, int]], set[str | None]]:
    """(inputs, kept, rejected) of each progress line, and the totals the lines showed."""
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("[polycap] progress ")]
    assert lines and "\r" not in res.stderr                # not a terminal: plain lines, no rewriting
    got = [LINE.search(ln) for ln in lines]
    assert all(got), lines
    seen = [(int(m[1]), int(m[3]), int(m[4])) for m in got]
    assert all(a[k] <= b[k] for a, b in zip(seen, seen[1:]) for k in range(3)), seen   # counts only grow
    return seen, {m[2] for m in got}


def _totals(stats: dict) -> tuple[int, int, int]:
    langs = stats["langs"].values()
    return stats["inputs"], sum(v["kept"] for v in langs), sum(v["rejected"] for v in langs)


def test_file_translation_progress_ends_at_the_final_totals(tmp_path):
    rows = [json.dumps({"caption": f"A photo of {i} red cups on a wooden table."}) for i in range(40)]
    rows[7] = json.dumps({"caption": FAIL})                 # rejected in both languages by the gates
    rows[20] = "{broken"                                    # a bad_record: rejected in both languages
    (tmp_path / "caps.jsonl").write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    res = _translate(tmp_path / "caps.jsonl", out)
    seen, totals = _progress(res)
    stats = json.loads((out / "_stats.json").read_text())
    assert seen[-1] == _totals(stats) == (40, 2 * 38, 2 * 2)
    assert totals == {"40"}                                 # a local JSONL is counted first: an ETA
    assert not (out / "_progress").exists()


def test_shard_translation_progress_ends_at_the_final_totals(eval_dir, tmp_path):
    run_write(_inputs(eval_dir), str(tmp_path / "in"), max_samples=2)
    out = tmp_path / "out"
    res = _translate(tmp_path / "in", out)
    seen, totals = _progress(res)
    stats = json.loads((out / "_stats.json").read_text())
    assert seen[-1] == _totals(stats) and seen[-1][0] == 6 and seen[-1][2] >= 2     # the FAIL caption, twice
    assert totals == {"6"}                                  # the input's manifest says how many samples
    assert not (out / "_progress").exists()
