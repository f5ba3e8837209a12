"""Exit codes are the same for every command (pipelines/cli.py EPILOG): 0 ok, 1 failure, 2 usage or config
error (nothing started), 3 conservation mismatch. One table row per (command, situation)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from polycap.pipelines.cli import EXIT_FAILURE, EXIT_MISMATCH, EXIT_OK, EXIT_USAGE, app
from tests.pipelines.test_report import make_run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("exit"), n=4)


@pytest.fixture
def images(tmp_path) -> Path:
    from PIL import Image

    d = tmp_path / "imgs"
    d.mkdir()
    for i, color in enumerate([(200, 30, 30), (30, 30, 200)]):
        Image.new("RGB", (96 + 16 * i, 80), color).save(d / f"{i}.png")
    return d


def job(tmp_path: Path, source: Path | str, extra: str = "") -> str:
    f = tmp_path / "job.yaml"
    f.write_text(f"sources: [{{kind: dir, path: '{source}'}}]\noutput: '{tmp_path / 'out'}'\n"
                 f"dedup: {{near: false}}\n{extra}")
    return str(f)


def _locked(tmp_path: Path, images: Path) -> list[str]:
    """A job whose output holds a live lock (this process on this host, fresh heartbeat)."""
    import json
    import os
    import socket
    import time

    from polycap.sharding.lock import LOCK_NAME

    (tmp_path / "out").mkdir()
    (tmp_path / "out" / LOCK_NAME).write_text(json.dumps({"run_id": "holder1", "host": socket.gethostname(),
                                                          "pid": os.getpid(), "heartbeat_unix": time.time()}))
    return ["run", job(tmp_path, images)]


def _unbalanced(*_a, **_k) -> dict:
    return {"inputs": 3, "kept": 1, "rejected": 1, "balanced": False, "rejected_by_reason": {},
            "kept_by_language": {}, "seconds": 0.0, "langs": {}}


def _balanced(*_a, **_k) -> dict:
    return {"inputs": 2, "balanced": True, "langs": {"ko": {"kept": 2, "rejected": 0, "balanced": True}}}


def _none_kept(*_a, **_k) -> dict:
    return {"inputs": 2, "balanced": True, "langs": {"ko": {"kept": 0, "rejected": 2, "balanced": True}}}


def _no_onnxruntime(monkeypatch) -> None:
    """As if the `ocr` extra were not installed: `import onnxruntime` fails (and no earlier check is cached)."""
    from polycap.transforms.backends import ocr_models

    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    ocr_models._check_onnx_file.cache_clear()


# (case id, argv from (tmp_path, images, run_dir), patch(monkeypatch) or None, exit code, text in stderr)
CASES = [
    ("run-missing-config", lambda t, i, r: ["run", str(t / "none.yaml")], None, EXIT_USAGE, "config file not found"),
    ("run-missing-source", lambda t, i, r: ["run", job(t, t / "nope")], None, EXIT_USAGE,
     "sources[0].path:"),
    ("run-glob-matches-nothing", lambda t, i, r: ["run", job(t, f"{i}/*.webp")], None, EXIT_USAGE, "matches no file"),
    ("run-bad-value", lambda t, i, r: ["run", job(t, i), "--set", "filter.min_side=-3"], None, EXIT_USAGE,
     "filter.min_side"),
    ("run-output-inside-input", lambda t, i, r: ["run", job(t, i), "--output", str(i / "out")], None, EXIT_USAGE,
     "lies inside the input"),
    ("run-output-locked", lambda t, i, r: _locked(t, i), None, EXIT_USAGE, "in use by run holder1"),
    ("run-ok", lambda t, i, r: ["run", job(t, i)], None, EXIT_OK, ""),
    ("run-mismatch", lambda t, i, r: ["run", job(t, i)],
     lambda m: m.setattr("polycap.pipelines.run.run", _unbalanced), EXIT_MISMATCH, ""),
    ("run-ocr-without-extra", lambda t, i, r: ["run", job(t, i, "ocr: {enabled: true}\n")], _no_onnxruntime,
     EXIT_FAILURE, "pip install 'polycap[ocr]'"),
    ("translate-missing-input", lambda t, i, r: ["translate", str(t / "in.jsonl"), "--out", str(t / "o")], None,
     EXIT_USAGE, "does not exist"),
    ("translate-missing-config", lambda t, i, r: ["translate", str(r), "--out", str(t / "o"), "--config",
                                                  str(t / "none.yaml")], None, EXIT_USAGE, "config file not found"),
    ("translate-ok", lambda t, i, r: ["translate", str(r), "--out", str(t / "o"), "--to", "ko"],
     lambda m: m.setattr("polycap.pipelines.translate.run", _balanced), EXIT_OK, ""),
    ("translate-mismatch", lambda t, i, r: ["translate", str(r), "--out", str(t / "o"), "--to", "ko"],
     lambda m: m.setattr("polycap.pipelines.translate.run", _unbalanced), EXIT_MISMATCH, ""),
    ("translate-output-over-input", lambda t, i, r: ["translate", str(r), "--out", str(r), "--to", "ko"], None,
     EXIT_USAGE, "choose another --out"),
    ("translate-bad-language", lambda t, i, r: ["translate", str(r), "--out", str(t / "o"), "--to", "ko,../x"],
     None, EXIT_USAGE, "is not a language tag"),
    ("translate-no-language", lambda t, i, r: ["translate", str(r), "--out", str(t / "o"), "--to", ","], None,
     EXIT_USAGE, "at least one target language"),
    ("translate-nothing-translated", lambda t, i, r: ["translate", str(r), "--out", str(t / "o"), "--to", "ko"],
     lambda m: m.setattr("polycap.pipelines.translate.run", _none_kept), EXIT_FAILURE, "nothing could be translated"),
    ("shards-stats-missing", lambda t, i, r: ["shards", "stats", str(t / "nope")], None, EXIT_USAGE, "does not exist"),
    ("shards-preview-missing", lambda t, i, r: ["shards", "preview", str(t / "nope")], None, EXIT_USAGE,
     "does not exist"),
    ("shards-validate-missing", lambda t, i, r: ["shards", "validate", str(t / "nope")], None, EXIT_USAGE,
     "does not exist"),
    ("shards-export-missing", lambda t, i, r: ["shards", "export", str(t / "nope"), "--out", str(t / "x.json")],
     None, EXIT_USAGE, "does not exist"),
    ("shards-stats-ok", lambda t, i, r: ["shards", "stats", str(r)], None, EXIT_OK, ""),
    ("shards-preview-ok", lambda t, i, r: ["shards", "preview", str(r), "-n", "1"], None, EXIT_OK, ""),
    ("shards-validate-ok", lambda t, i, r: ["shards", "validate", str(r)], None, EXIT_OK, ""),
    ("train-missing-config", lambda t, i, r: ["train", "sft", str(t / "none.yaml")], None, EXIT_USAGE,
     "config file not found"),
    ("train-missing-shards", lambda t, i, r: ["train", "pretrain", str(t / "none.yaml"), "--shards", str(t / "nope")],
     None, EXIT_USAGE, "does not exist"),
    ("report-missing", lambda t, i, r: ["report", str(t / "nope")], None, EXIT_USAGE, "does not exist"),
    ("unknown-command", lambda t, i, r: ["frobnicate"], None, EXIT_USAGE, "No such command"),
]


@pytest.mark.parametrize("argv,patch,code,text", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_exit_code(tmp_path, images, run_dir, monkeypatch, argv, patch, code, text):
    if patch:
        patch(monkeypatch)
    res = CliRunner().invoke(app, argv(tmp_path, images, run_dir))
    assert res.exit_code == code, (res.output, res.exception)
    assert text in res.stderr, res.stderr
    if code in (EXIT_USAGE, EXIT_FAILURE):
        assert "Traceback" not in res.output


def test_shards_validate_fails_with_1_on_a_corrupt_shard(tmp_path):
    run = make_run(tmp_path, n=3)
    tar = sorted((run / "shards").glob("*.tar"))[0]
    tar.write_bytes(tar.read_bytes()[:1024])
    res = CliRunner().invoke(app, ["shards", "validate", str(run)])
    assert res.exit_code == EXIT_FAILURE


def test_top_level_help_documents_the_exit_codes():
    res = CliRunner().invoke(app, ["--help"], terminal_width=200)
    flat = " ".join(res.stdout.split())
    for part in ("0 ok", "1 failure", "2 usage or config error", "3 conservation mismatch", "polycap init"):
        assert part in flat, flat
