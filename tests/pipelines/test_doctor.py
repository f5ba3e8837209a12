"""`polycap doctor` prints the environment like `datasets-cli env`, quickly, and never fails."""
from __future__ import annotations

import pytest

from polycap.pipelines import doctor


def test_never_raises_on_a_broken_config_or_missing_packages(tmp_path, monkeypatch):
    bad = tmp_path / "bad.yaml"
    bad.write_text("caption: [unclosed\n")
    monkeypatch.setattr(doctor, "dist_version", lambda name: doctor.NOT_INSTALLED)
    monkeypatch.delenv("POLYCAP_CAPTION_ENDPOINT", raising=False)
    info = doctor.collect(str(bad))
    assert "not valid YAML" in info["config"] and info["caption_endpoint"] == "not configured"
    assert info["versions"]["torch"] == "not installed" and info["versions"]["vllm"] == "not installed"
    assert all(v.startswith("missing") for v in info["extras"].values())



@pytest.mark.parametrize("module,extra", [("onnxruntime", "ocr"), ("paddleocr", "ocr"), ("rapidocr_onnxruntime", "ocr"),
                                          ("torch", "local"), ("transformers.models", "local"), ("vllm", "vllm"),
                                          ("skimage", "demo"), ("numpy", None)])
def test_a_missing_module_names_its_extra(module, extra):
    assert doctor.extra_for(module) == extra
    msg = doctor.missing_dependency_message(ModuleNotFoundError(f"No module named {module!r}", name=module))
    assert (msg is None) if extra is None else f"pip install 'polycap[{extra}]'" in msg
