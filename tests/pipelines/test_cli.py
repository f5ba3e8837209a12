"""The command line on bad config: one line naming the field (or file and line), exit 2, no traceback."""
from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from polycap.pipelines.cli import app


def _bad_yaml(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("translate:\n  to: [ko\nocr: {}\n")
    return str(f)


def _commands(tmp_path, config: str | None, sets: list[str]) -> dict[str, list[str]]:
    s = [a for kv in sets for a in ("--set", kv)]
    cfg = [config] if config else [str(tmp_path / "none.yaml")]
    opt = ["--config", config] if config else []
    return {"run": ["run", *cfg, *s], "translate": ["translate", "in.jsonl", "--out", str(tmp_path / "o"), *opt, *s],
            "ocr-eval": ["ocr-eval", "gt.jsonl", *opt, *s], "train": ["train", "sft", *cfg, *s]}


@pytest.mark.parametrize("command", ["run", "translate", "ocr-eval", "train"])
def test_yaml_syntax_error_is_one_line_naming_file_and_line(tmp_path, command):
    res = CliRunner().invoke(app, _commands(tmp_path, _bad_yaml(tmp_path), [])[command])
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "bad.yaml: not valid YAML: line 3" in lines[0], res.stderr
    assert "Traceback" not in res.output


@pytest.mark.parametrize("command,kv,field", [
    ("run", "shards.split=val set", "shards.split"),
    ("run", "filter.max_aspect=[", "filter.max_aspect"),
    ("translate", "prompt_style=weird", "translate.prompt_style"),
    ("translate", "backend=os:system", "translate.backend"),
    ("ocr-eval", "engine=tensorrt", "ocr.engine"),
    ("ocr-eval", "min_score={", "ocr.min_score"),
    ("train", "optim.eps=.nan", "optim.eps"),
    ("train", "train.batch_size=[1", "train.batch_size"),
])
def test_bad_set_value_is_one_line_naming_the_field(tmp_path, command, kv, field):
    config = tmp_path / "c.yaml"
    config.write_text("model: {path: tiny}\n" if command == "train" else "sources: [{kind: dir, path: /nonexistent}]\n")
    argv = _commands(tmp_path, str(config) if command in ("run", "train") else None, [kv])[command]
    res = CliRunner().invoke(app, argv)
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and f"config: {field}:" in lines[0], res.stderr


def test_python_m_polycap_bad_set_exits_2_without_traceback(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("sources: [{kind: dir, path: /nonexistent}]\n")
    res = subprocess.run([sys.executable, "-m", "polycap", "run", str(config), "--set", "caption.backend=os:system"],
                         capture_output=True, text=True)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines() == [
        "error: config: caption.backend: 'os:system' is not one of openai, vllm, local, none"]
