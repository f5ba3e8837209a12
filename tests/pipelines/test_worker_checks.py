"""Model availability is checked where the model runs (the workers' `load_model`), not on the launcher: the
launcher decides from the config alone, and a worker that lacks the model fails the job naming the fix."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from polycap.pipelines.run import caption_plan, runner_name, translate_plan
from polycap.schemas.config import CaptionConfig, Config, SourceConfig, TranslateConfig
from polycap.transforms.backends.base import GenModelHandler, ModelUnavailableError
from polycap.transforms.caption import ENDPOINT_ENV
from tests.conftest import jpeg_bytes
from tests.fakes.openai_server import FakeOpenAIServer

DEAD = "http://127.0.0.1:9/v1"


def _cfg(**kw) -> Config:
    return Config(sources=[SourceConfig(kind="dir", path="x")], output="x", **kw)


def test_launcher_decides_from_config_only(monkeypatch):
    monkeypatch.delenv(ENDPOINT_ENV, raising=False)
    # vLLM is not installed here, yet a vllm caption stage runs: the GPU workers have it
    run, note = caption_plan(_cfg(caption=CaptionConfig(enabled=True, backend="vllm", model="/models/m")))
    assert run and "NOT RUN" not in note and "checked on each worker" in note
    run, note = caption_plan(_cfg(caption=CaptionConfig(enabled=True, endpoint=DEAD, model="m")))
    assert run and DEAD in note                      # unreachable from here: the workers decide
    run, note = caption_plan(_cfg(caption=CaptionConfig(enabled=True, endpoint="")))
    assert not run and "not configured" in note and "alt-text" in note
    monkeypatch.setenv(ENDPOINT_ENV, DEAD)
    assert caption_plan(_cfg(caption=CaptionConfig(enabled=True, endpoint="")))[0]
    assert translate_plan(_cfg(translate=TranslateConfig(enabled=True, endpoint=DEAD)))[0]
    run, note = translate_plan(_cfg(translate=TranslateConfig(enabled=True, endpoint="")))
    assert not run and "NOT RUN" in note and "no translate.endpoint" in note
    assert runner_name(["--runner", "DataflowRunner"]) == "DataflowRunner"
    assert runner_name(["--runner=FlinkRunner"]) == "FlinkRunner" and runner_name([]) == "DirectRunner"


def test_worker_load_model_fails_naming_the_fix(tmp_path):
    dead = GenModelHandler(CaptionConfig(enabled=True, endpoint=DEAD, model="m"), where="caption.backend")
    with pytest.raises(ModelUnavailableError, match=r"^caption: endpoint http://127.0.0.1:9/v1 does not answer"):
        dead.load_model()
    with FakeOpenAIServer(model="fake-vlm") as server:
        GenModelHandler(CaptionConfig(enabled=True, endpoint=server.url, model="fake-vlm")).load_model()
        wrong = GenModelHandler(TranslateConfig(enabled=True, endpoint=server.url, model="other"),
                                where="translate.backend")
        with pytest.raises(ModelUnavailableError, match=r"^translate: .* does not serve 'other'"):
            wrong.load_model()
    if not _has("vllm"):
        vllm = GenModelHandler(CaptionConfig(enabled=True, backend="vllm", model="/models/m"), where="caption.backend")
        with pytest.raises(ModelUnavailableError, match="Dockerfile.gpu"):
            vllm.load_model()
    local = GenModelHandler(CaptionConfig(enabled=True, backend="local", model=str(tmp_path / "nope")),
                            where="caption.backend")
    if _has("torch"):
        with pytest.raises(ModelUnavailableError, match=r"^caption: backend 'local'.*checkpoint directory"):
            local.load_model()


def test_ocr_gpu_without_cuda_provider_names_the_extra():
    pytest.importorskip("onnxruntime")
    import onnxruntime

    from polycap.transforms.backends.ocr_models import OcrModelError
    from polycap.transforms.backends.ocr_paddle import check_gpu_runtime

    check_gpu_runtime(SimpleNamespace(engine="onnxruntime", device="cpu"))
    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this machine has the CUDA provider")
    with pytest.raises(OcrModelError, match=r"ocr-gpu"):
        check_gpu_runtime(SimpleNamespace(engine="onnxruntime", device="gpu:0"))


def _has(module: str) -> bool:
    import importlib.util
    return importlib.util.find_spec(module) is not None


@pytest.mark.slow
def test_unreachable_endpoint_fails_the_job_with_one_message(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.jpg").write_bytes(jpeg_bytes(300, 300))
    cfg = tmp_path / "job.yaml"
    cfg.write_text(f"sources: [{{kind: dir, path: '{src}', name: t}}]\noutput: '{tmp_path / 'out'}'\n"
                   f"caption: {{enabled: true, backend: openai, endpoint: '{DEAD}', model: m}}\n")
    res = subprocess.run([sys.executable, "-m", "polycap", "run", str(cfg)], capture_output=True, text=True,
                         timeout=300, cwd=Path(__file__).resolve().parents[2])
    assert res.returncode != 0
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("error: caption: endpoint http://127.0.0.1:9/v1 does not answer"), last
    assert "NOT RUN" not in res.stdout + res.stderr
