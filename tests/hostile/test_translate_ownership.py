"""What `polycap translate` owns in OUT: it never writes over its input (exit 2), takes only language tags as
target languages (exit 2), and removes this input's previous outputs so a failed re-translation leaves no stale
file looking current (exit 1)."""
from __future__ import annotations

import hashlib
import json
import os

import pytest
from typer.testing import CliRunner

from polycap.pipelines.cli import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, app
from polycap.pipelines.translate import UsageError, run
from polycap.schemas.config import ConfigError, TranslateConfig
from tests.fakes.fake_translator import FAKE  # deterministic TEST backend, not a model

FAIL = "FAKEFAILALWAYS the dog and the cat are on the beach with the man."
FAKE_SET = ["--set", f"backend={FAKE}", "--set", "model=fake"]


def _cli(*argv: str):
    return CliRunner().invoke(app, ["translate", *argv, *FAKE_SET])


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_file_is_never_translated_over_itself(tmp_path):
    out = tmp_path / "out"
    (out / "ko").mkdir(parents=True)
    src = out / "ko" / "x.jsonl"
    src.write_text('{"caption": "A red cup."}\n')
    before = _digest(src)
    res = _cli(str(src), "--to", "ko", "--out", str(out))
    assert res.exit_code == EXIT_USAGE, res.output
    assert "is also an output of this command" in res.stderr and "Traceback" not in res.output
    assert _digest(src) == before and sorted(os.listdir(out)) == ["ko"]      # nothing written, nothing removed
    link = tmp_path / "elsewhere" / "x.jsonl"                                 # the same file under another name
    link.parent.mkdir()
    link.symlink_to(src)
    assert _cli(str(link), "--to", "ko", "--out", str(out)).exit_code == EXIT_USAGE
    assert _digest(src) == before
    res = _cli(str(src), "--to", "vi", "--out", str(out))                     # another language: a new file
    assert res.exit_code == EXIT_OK, res.output
    assert _digest(src) == before and (out / "vi" / "x.jsonl").is_file()


def test_a_file_inside_what_translate_cleans_up_is_refused(tmp_path):
    out = tmp_path / "out"
    src = out / "rejects" / "r.jsonl" / "r.jsonl"
    src.parent.mkdir(parents=True)
    src.write_text('{"caption": "A red cup."}\n')
    with pytest.raises(UsageError, match="which this command writes and cleans up"):
        run(str(src), ["ko"], str(out), TranslateConfig(backend=FAKE, model="fake"))
    assert src.is_file()


def test_shards_are_never_translated_over_themselves(tmp_path):
    from tests.pipelines.test_report import make_sample
    from tests.sharding.conftest import run_write

    out = tmp_path / "run"
    run_write([make_sample(i) for i in range(3)], str(out), max_samples=2)
    before = {p.name: _digest(p) for p in (out / "shards").iterdir()}
    for inp in (out, out / "shards", out / "shards" / "train-000000.tar", f"{out}/shards/train-*.tar"):
        res = _cli(str(inp), "--to", "ko", "--out", str(out))
        assert res.exit_code == EXIT_USAGE, (inp, res.output)
        assert "choose another --out" in res.stderr
    assert {p.name: _digest(p) for p in (out / "shards").iterdir()} == before
    assert sorted(os.listdir(out)) == ["manifest.parquet", "shards"]


@pytest.mark.parametrize("to,message", [("../x", "is not a language tag"), ("ko,../x", "is not a language tag"),
                                        ("ko/vi", "is not a language tag"), ("KO", "is not a language tag"),
                                        (",", "at least one target language"),
                                        ("", "at least one target language")])
def test_target_languages_must_be_tags(tmp_path, to, message):
    src = tmp_path / "c.jsonl"
    src.write_text('{"caption": "A red cup."}\n')
    res = _cli(str(src), "--to", to, "--out", str(tmp_path / "out"))
    assert res.exit_code == EXIT_USAGE, res.output
    assert message in res.stderr and "Traceback" not in res.output
    assert not (tmp_path / "out").exists()


def test_the_python_api_checks_the_languages_by_the_same_rule(tmp_path):
    src = tmp_path / "c.jsonl"
    src.write_text('{"caption": "A red cup."}\n')
    cfg = TranslateConfig(backend=FAKE, model="fake", to=["ko"])       # `to` argument differs from cfg.to
    with pytest.raises(ConfigError, match="not a language tag"):
        run(str(src), ["../x"], str(tmp_path / "out"), cfg)
    with pytest.raises(ConfigError, match="at least one target language"):
        run(str(src), [], str(tmp_path / "out"), cfg)
    assert not (tmp_path / "out").exists() and not (tmp_path / "x").exists()


def test_a_retranslation_whose_records_all_fail_leaves_no_stale_output(tmp_path):
    src, out = tmp_path / "a.jsonl", tmp_path / "out"
    src.write_text('{"caption": "A red cup."}\n{"caption": "A blue cup."}\n')
    assert _cli(str(src), "--to", "ko", "--out", str(out)).exit_code == EXIT_OK
    assert len((out / "ko" / "a.jsonl").read_text().splitlines()) == 2
    src.write_text(json.dumps({"caption": FAIL}) + "\n")                   # the input changed; it cannot translate
    res = _cli(str(src), "--to", "ko", "--out", str(out))
    assert res.exit_code == EXIT_FAILURE, res.output
    assert "nothing could be translated" in res.stderr
    assert not (out / "ko" / "a.jsonl").exists()                           # the previous translation is gone
    stats = json.loads((out / "_stats.json").read_text())
    assert stats["inputs"] == 1 and stats["langs"]["ko"] == {"kept": 0, "rejected": 1, "balanced": True}


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_a_lone_surrogate_in_one_record_is_one_reject_not_a_crash(tmp_path, suffix):
    """JSON may escape a lone surrogate (`\\ud800`) that no UTF-8 writer accepts: that record is a reject with
    a reason, the others are translated."""
    good = [{"id": "a-en", "caption": "A red cup."}, {"id": "c-en", "caption": "A blue cup."}]
    bad = '{"id": "b-en", "caption": "A cup \\ud800 on a table."}'
    src = tmp_path / f"in{suffix}"
    if suffix == ".jsonl":
        src.write_text("\n".join([json.dumps(good[0]), bad, json.dumps(good[1])]) + "\n")
    else:
        src.write_text("[" + ",".join([json.dumps(good[0]), bad, json.dumps(good[1])]) + "]")
    out = tmp_path / "out"
    res = _cli(str(src), "--to", "ko", "--out", str(out))
    assert res.exit_code == EXIT_OK, res.output
    assert "Traceback" not in res.output
    stats = json.loads((out / "_stats.json").read_text())
    assert stats["inputs"] == 3 and stats["langs"]["ko"]["kept"] == 2 and stats["langs"]["ko"]["rejected"] == 1
    from polycap.sharding.rejects import read_rejects
    rows = read_rejects(str(out)).to_pylist()
    assert len(rows) == 1 and rows[0]["key"] == "b-en" and rows[0]["reason"], rows


def test_a_jsonl_line_with_bytes_that_are_not_utf8_is_one_reject(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_bytes(b'{"caption": "A red cup."}\n{"caption": "caf\xe9 \xff"}\n{"caption": "A blue cup."}\n')
    out = tmp_path / "out"
    res = _cli(str(src), "--to", "ko", "--out", str(out))
    assert res.exit_code == EXIT_OK, res.output
    stats = json.loads((out / "_stats.json").read_text())
    assert stats["inputs"] == 3 and stats["langs"]["ko"]["kept"] == 2 and stats["bad_records"] == 1
    assert len((out / "ko" / "in.jsonl").read_text(encoding="utf-8").splitlines()) == 2
