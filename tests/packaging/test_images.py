"""The worker images agree with the launcher: the Beam SDK image tag and the apache-beam pin equal the
installed apache-beam (a worker on another Beam fails at job start), the image's Python satisfies
pyproject's requires-python and is the launcher's minor version, torch is the `local` extra's pin, and the
GPU image keeps Beam's boot entrypoint (custom-container contract). Docker is not needed: the files are read."""
from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

import apache_beam
import pytest

REPO = Path(__file__).resolve().parents[2]
IMAGES = ("Dockerfile", "Dockerfile.gpu")


def _args(text: str) -> dict[str, str]:
    return dict(re.findall(r"^ARG (\w+)=(\S*)\s*$", text, flags=re.M))


def _expand(value: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], value)


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


@pytest.mark.parametrize("name", IMAGES)
def test_image_pins_agree_with_launcher_and_pyproject(name):
    text = (REPO / name).read_text()
    args = _args(text)
    beam, py = args["BEAM_VERSION"], args["PY_VERSION"]
    assert beam == apache_beam.__version__, f"{name}: BEAM_VERSION {beam} != launcher's {apache_beam.__version__}"
    sdk = [_expand(m, args) for m in re.findall(r"^FROM (apache/beam_python\S+)", text, flags=re.M)]
    assert sdk == [f"apache/beam_python{py}_sdk:{beam}"], sdk
    # apache-beam installed at exactly the SDK image's version
    assert re.search(r'"apache-beam==\$\{BEAM_VERSION\}"', text), f"{name}: apache-beam is not pinned"
    req = _pyproject()["project"]["requires-python"]
    low = tuple(int(x) for x in req.removeprefix(">=").split("."))
    assert tuple(int(x) for x in py.split(".")) >= low, f"{name}: Python {py} does not satisfy {req}"
    assert py == f"{sys.version_info.major}.{sys.version_info.minor}", "launcher and workers pickle across Pythons"
    local = _pyproject()["project"]["optional-dependencies"]["local"]
    torch_pin = next(d.split("==")[1] for d in local if d.startswith("torch=="))
    torch_in_image = {_expand(v, args) for v in re.findall(r"torch==(\$\{\w+\}|[\w.]+)", text)}
    assert torch_in_image == {torch_pin}, f"{name}: torch {torch_in_image} != the local extra's {torch_pin}"


@pytest.mark.parametrize("name", IMAGES)
def test_image_copies_the_package(name):
    text = (REPO / name).read_text()
    copied = {p for line in re.findall(r"^COPY (?!--from)(.+)$", text, flags=re.M) for p in line.split()[:-1]}
    for folder in ("polycap", "pipelines", "transforms", "schemas", "sharding", "prompts", "trainer", "configs"):
        assert folder in copied and (REPO / folder).is_dir(), f"{name}: {folder}/ not copied"
    for f in ("pyproject.toml", "setup.py", "README.md", "LICENSE"):
        assert f in copied and (REPO / f).is_file(), f"{name}: {f} not copied"


def test_gpu_image_keeps_beam_boot_and_gpu_runtimes():
    text = (REPO / "Dockerfile.gpu").read_text()
    assert re.search(r"^COPY --from=beam_sdk /opt/apache/beam /opt/apache/beam$", text, flags=re.M)
    assert re.search(r'^ENTRYPOINT \["/opt/apache/beam/boot"\]$', text, flags=re.M)
    extras = _args(text)["EXTRAS"].split(",")
    declared = _pyproject()["project"]["optional-dependencies"]
    assert {"vllm", "ocr-gpu"} <= set(extras) and set(extras) <= set(declared)
    assert any(d.startswith("onnxruntime-gpu") for d in declared["ocr-gpu"])
    assert "CUDAExecutionProvider" in text      # the build checks the GPU provider is really there
