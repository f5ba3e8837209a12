"""`polycap init`: write a starter job config, or one of the bundled examples, for the user to edit."""
from __future__ import annotations

from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

STARTER = "starter"


def configs_dir() -> Traversable:
    """The bundled configs: package data `polycap.configs` (the repository's `configs/` folder)."""
    try:
        return resources.files("polycap.configs")
    except ModuleNotFoundError:  # an editable install made before polycap.configs existed: reinstall fixes it
        return Path(__file__).resolve().parents[1] / "configs"


def _summary(text: str) -> str:
    """A config's first comment line: what it is for."""
    for line in text.splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""


def bundled_configs() -> dict[str, str]:
    """name (file stem) -> one-line summary, for every bundled `*.yaml`."""
    files = sorted((f for f in configs_dir().iterdir() if f.name.endswith(".yaml")), key=lambda f: f.name)
    return {f.name[: -len(".yaml")]: _summary(f.read_text(encoding="utf-8")) for f in files}


def config_text(name: str = STARTER) -> str:
    f = configs_dir() / f"{name}.yaml"
    if not f.is_file():
        raise KeyError(f"no bundled config {name!r}; there are: {', '.join(bundled_configs())}")
    return f.read_text(encoding="utf-8")


def write_config(path: str, name: str = STARTER, force: bool = False) -> str:
    """Write bundled config `name` to `path` (a local file; its folder is created); returns the path.
    An existing file is kept unless `force`."""
    text = config_text(name)
    dest = Path(path)
    if dest.exists() and not force:
        raise FileExistsError(f"{dest} exists; pass --force to overwrite it")
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(text, encoding="utf-8")
    return str(dest)
