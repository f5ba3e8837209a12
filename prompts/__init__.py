"""Prompts as data: versioned YAML files (`id`, `version`, `template`, ...) loaded with their sha256."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

PROMPTS_DIR = Path(__file__).resolve().parent
REQUIRED = ("id", "version", "template")


class PromptError(ValueError):
    """A prompt file that is missing, unparsable, or lacks id/version/template."""


@dataclass(frozen=True)
class Prompt:
    id: str
    version: int | str
    template: str
    sha256: str                       # of the file's bytes: any edit changes it (and the cache keys)
    path: str
    meta: dict[str, Any] = field(default_factory=dict)  # every other key in the file

    def render(self, **values: Any) -> str:
        """`str.format` with the given values; a missing placeholder is an error, not an empty string."""
        try:
            return self.template.format(**values)
        except KeyError as e:
            raise PromptError(f"{self.path}: template needs a value for {e}") from None


def load_prompt(path: str | Path) -> Prompt:
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise PromptError(f"prompt file {p}: {e.strerror or e}") from None
    try:
        data = yaml.safe_load(raw.decode("utf-8"))
    except yaml.YAMLError as e:
        raise PromptError(f"prompt file {p}: not valid YAML: {e}") from None
    if not isinstance(data, dict) or any(k not in data for k in REQUIRED):
        raise PromptError(f"prompt file {p}: needs keys {', '.join(REQUIRED)}")
    meta = {k: v for k, v in data.items() if k not in REQUIRED}
    return Prompt(id=str(data["id"]), version=data["version"], template=str(data["template"]),
                  sha256=hashlib.sha256(raw).hexdigest(), path=str(p), meta=meta)


def load_prompt_dir(task: str, directory: str | Path | None = None) -> dict[str, Prompt]:
    """All `*.yaml` prompts of a task (`caption`, `translate`), keyed by file stem."""
    d = Path(directory) if directory else PROMPTS_DIR / task
    if not d.is_dir():
        raise PromptError(f"prompt directory not found: {d}")
    return {f.stem: load_prompt(f) for f in sorted(d.glob("*.yaml"))}
