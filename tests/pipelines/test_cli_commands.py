"""The command line of `polycap report`, `polycap doctor` and `polycap init`."""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from polycap.pipelines.cli import app
from polycap.pipelines.starter import bundled_configs, config_text
from tests.pipelines.test_report import make_run

# ---------------------------------------------------------------- report

@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("cli-report"), n=4)


def test_report_writes_the_file_and_prints_its_path(run_dir, tmp_path):
    out = tmp_path / "cli.html"
    res = CliRunner().invoke(app, ["report", str(run_dir), "--out", str(out), "--gallery", "3"])
    assert res.exit_code == 0, res.output
    assert res.stdout.strip().splitlines()[-1] == str(out) and out.stat().st_size > 1000
    assert out.read_text().count('<article class="sample"') == 3
    res = CliRunner().invoke(app, ["report", str(tmp_path / "nope")])
    assert res.exit_code == 2 and "does not exist" in res.stderr


# ---------------------------------------------------------------- doctor

class _Models(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's name
        body = json.dumps({"data": [{"id": "tiny-vlm"}]}).encode()
        self.send_response(200 if self.path.endswith("/models") else 404)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_a):
        pass


@pytest.fixture
def endpoint():
    server = HTTPServer(("127.0.0.1", 0), _Models)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/v1"
    server.shutdown()


def test_doctor_prints_versions_extras_models_and_endpoints(tmp_path, endpoint, monkeypatch):
    monkeypatch.setenv("POLYCAP_CAPTION_ENDPOINT", endpoint)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"translate: {{endpoint: 'http://127.0.0.1:9/v1'}}\nocr: {{model_dir: '{tmp_path}'}}\n")
    started = time.monotonic()
    res = CliRunner().invoke(app, ["doctor", "--config", str(cfg)])
    assert res.exit_code == 0, res.output
    assert time.monotonic() - started < 15
    out = res.stdout
    for label in ("polycap version:", "Record schema version:", "Python version:", "apache-beam version:",
                  "pyarrow version:", "Pillow version:", "torch version:", "transformers version:", "vllm version:",
                  "paddleocr version:", "onnxruntime version:", "Extras:"):
        assert f"- {label}" in out, label
    assert f"OCR models ({tmp_path}): PP-OCRv6_small_det missing" in out
    assert f"Caption endpoint: {endpoint} reachable, serves tiny-vlm" in out
    assert "Translate endpoint: http://127.0.0.1:9/v1 NOT reachable" in out


def test_doctor_exits_0_with_a_missing_config(tmp_path):
    res = CliRunner().invoke(app, ["doctor", "--config", str(tmp_path / "none.yaml"), "--json"])
    assert res.exit_code == 0 and "config file not found" in json.loads(res.stdout)["config"]


# ---------------------------------------------------------------- init

def test_init_writes_a_starter_and_keeps_an_existing_file(tmp_path):
    dest = tmp_path / "polycap.yaml"
    res = CliRunner().invoke(app, ["init", str(dest)])
    assert res.exit_code == 0 and res.stdout.strip() == str(dest) and dest.read_text() == config_text("starter")
    dest.write_text("mine\n")
    res = CliRunner().invoke(app, ["init", str(dest)])
    assert res.exit_code == 2 and "--force" in res.stderr and dest.read_text() == "mine\n"
    assert CliRunner().invoke(app, ["init", str(dest), "--force"]).exit_code == 0


def test_init_lists_and_writes_the_bundled_examples(tmp_path):
    res = CliRunner().invoke(app, ["init", "--list"])
    assert res.exit_code == 0 and all(n in res.stdout for n in bundled_configs())
    res = CliRunner().invoke(app, ["init", str(tmp_path / "t.yaml"), "--example", "train-tiny"])
    assert res.exit_code == 0 and "model:" in (tmp_path / "t.yaml").read_text()
    res = CliRunner().invoke(app, ["init", str(tmp_path / "x.yaml"), "--example", "nope"])
    assert res.exit_code == 2 and "starter" in res.stderr
