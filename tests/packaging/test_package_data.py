"""The wheel and sdist carry the example configs (for `polycap init`) and the LICENSE, and build without
setuptools warnings (a deprecation today is a build failure in a later setuptools)."""
from __future__ import annotations

import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted(p.name for p in (REPO / "configs").glob("*.yaml"))


def _build(cmd: list[str], out: Path) -> str:
    # run outside the repo: its build/ folder would shadow the `build` package
    res = subprocess.run(cmd, cwd=out, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    return res.stdout + res.stderr


def _warnings(log: str) -> list[str]:
    # byte-compiling is switched off by PYTHONDONTWRITEBYTECODE in some environments; not a packaging problem
    return [line for line in log.splitlines() if "warn" in line.lower() and "byte-compiling is disabled" not in line]


def test_wheel_carries_configs_and_license_without_warnings(tmp_path):
    log = _build([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path),
                  str(REPO)], tmp_path)
    assert _warnings(log) == []
    (whl,) = tmp_path.glob("polycap-*.whl")
    names = zipfile.ZipFile(whl).namelist()
    assert {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")} == {"polycap"}
    assert "starter.yaml" in CONFIGS and all(f"polycap/configs/{c}" in names for c in CONFIGS)
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    meta = zipfile.ZipFile(whl).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "License-Expression: Apache-2.0" in meta and "License-File: LICENSE" in meta


def test_sdist_carries_configs_and_license_without_warnings(tmp_path):
    pytest.importorskip("build", reason="`pip install build` to check the sdist")
    log = _build([sys.executable, "-m", "build", "--sdist", "--no-isolation", "-o", str(tmp_path), str(REPO)],
                 tmp_path)
    assert _warnings(log) == []
    (sdist,) = tmp_path.glob("polycap-*.tar.gz")
    names = {n.split("/", 1)[1] for n in tarfile.open(sdist).getnames() if "/" in n}
    assert "LICENSE" in names and all(f"configs/{c}" in names for c in CONFIGS)


def test_license_is_the_apache_2_text():
    text = (REPO / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text and "END OF TERMS AND CONDITIONS" in text
