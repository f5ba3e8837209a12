"""The wheel installs one top-level package, `polycap`, so it cannot collide with PyPI projects named
`trainer`, `transforms`, ... nor with a user's own `transforms.py` in the working directory."""
from __future__ import annotations

import os
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(REPO)], check=True, capture_output=True, timeout=600)
    (whl,) = out.glob("polycap-*.whl")
    return whl


def test_wheel_holds_exactly_one_top_level_package(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert tops == {"polycap"}
    for sub in ("pipelines", "transforms", "transforms/backends", "schemas", "sharding", "prompts", "trainer"):
        assert f"polycap/{sub}/__init__.py" in names, sub
    assert "polycap/__main__.py" in names
    assert any(n.startswith("polycap/prompts/caption/") and n.endswith(".yaml") for n in names)


@pytest.mark.slow
def test_installs_beside_coqui_tts_trainer_and_both_keep_their_files(wheel, tmp_path):
    """coqui-tts-trainer installs a top-level `trainer` package: it once overwrote and then deleted ours."""
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True, system_site_packages=False)
    py = env_dir / "bin" / "python"

    def pip(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(py), "-m", "pip", "-q", "--disable-pip-version-check", *args],
                              capture_output=True, text=True, timeout=900)

    assert pip("install", "--no-deps", str(wheel)).returncode == 0
    res = pip("install", "--no-deps", "coqui-tts-trainer==0.4.0")
    if res.returncode != 0:
        pytest.fail(f"could not install coqui-tts-trainer from the package index: {res.stderr[-800:]}")
    site = Path(subprocess.check_output([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                        text=True).strip())
    ours = sorted(p.relative_to(site).as_posix() for p in (site / "polycap").rglob("*.py"))
    assert "polycap/trainer/config.py" in ours and (site / "trainer" / "__init__.py").exists()
    assert pip("uninstall", "-y", "coqui-tts-trainer").returncode == 0
    assert not (site / "trainer").exists()
    assert sorted(p.relative_to(site).as_posix() for p in (site / "polycap").rglob("*.py")) == ours


def test_user_transforms_py_in_cwd_does_not_affect_a_multi_processing_run(tmp_path):
    """Workers import `polycap.transforms`; a `transforms.py` (or `schemas.py`) in the cwd is never loaded."""
    from PIL import Image

    work = tmp_path / "work"
    (work / "imgs").mkdir(parents=True)
    for i, color in enumerate([(200, 30, 30), (30, 200, 30), (30, 30, 200)]):
        Image.new("RGB", (96 + 16 * i, 80), color).save(work / "imgs" / f"{i}.png")
    for name in ("transforms", "schemas", "sharding", "pipelines"):
        (work / f"{name}.py").write_text("raise SystemExit('user module imported by polycap')\n")
    (work / "job.yaml").write_text("sources: [{kind: dir, path: imgs}]\noutput: out\ndedup: {near: false}\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    res = subprocess.run([sys.executable, "-m", "polycap", "run", "job.yaml", "--",
                          "--direct_num_workers=2", "--direct_running_mode=multi_processing"],
                         cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    assert "inputs 3 = kept 3 + rejected 0" in res.stdout
