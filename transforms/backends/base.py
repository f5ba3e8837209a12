"""The one interface every text-generation backend implements (vllm, openai, local), plus its ModelHandler.

Captioning and translation build `GenRequest`s, hand them to `RunInference(GenModelHandler(spec))`, and
get one `GenResult` per request back, keyed. Backends never raise for a single bad request: the error is
carried in `GenResult.error` so the stage above can retry, gate or reject it with a reason.

Backends come from a fixed registry of names; a config names one, it never names code to import. Other
backends (test doubles) are added in code with `register_backend`, which also lets the config name them.
"""
from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from polycap.schemas.config import BUILTIN_BACKENDS, NAME, ConfigError, EndpointConfig, allow_backend, backend_names

# The built-in backends, imported only when used (their modules pull in heavy optional dependencies).
_BUILTIN = {
    "openai": ("polycap.transforms.backends.gen_openai", "OpenAIBackend"),
    "vllm": ("polycap.transforms.backends.gen_vllm", "VllmBackend"),
    "local": ("polycap.transforms.backends.gen_local", "LocalBackend"),
}
REGISTRY: dict[str, type[GenBackend] | tuple[str, str]] = dict(_BUILTIN)


def register_backend(name: str, cls: type[GenBackend]) -> None:
    """Add a backend class under `name` (e.g. a test double); config may then say `backend: <name>`.

    Handlers hold the class itself, so Beam pickles it by reference and workers need no registration.
    """
    if not NAME.fullmatch(name) or name in (*BUILTIN_BACKENDS, "none"):
        raise ValueError(f"register_backend: {name!r} must match [a-z0-9_-]+ and not be a built-in name")
    old = REGISTRY.get(name)
    if isinstance(old, type) and (old.__module__, old.__qualname__) != (cls.__module__, cls.__qualname__):
        raise ValueError(f"register_backend: {name!r} is already {old.__module__}.{old.__qualname__}")
    REGISTRY[name] = cls
    allow_backend(name)


def backend_class(name: str, where: str = "backend") -> type[GenBackend]:
    """The class registered under `name`; a ConfigError naming the field `where` if there is none."""
    target = REGISTRY.get(name)
    if target is None:
        usable = [n for n in backend_names() if n != "none"]
        raise ConfigError(f"{where}: {name!r} is not a registered backend (one of {', '.join(usable)})")
    if isinstance(target, tuple):
        module, attr = target
        return getattr(importlib.import_module(module), attr)
    return target


@dataclass(frozen=True)
class GenRequest:
    key: str                        # unique per request within a batch; travels back on the result
    messages: list[dict[str, Any]]  # chat messages; an image is a content part {"type": "image"}
    images: tuple[bytes, ...] = ()  # encoded images, one per {"type": "image"} part, in order
    params: dict[str, Any] = field(default_factory=dict)  # max_tokens, temperature, top_p, seed


@dataclass(frozen=True)
class GenResult:
    key: str
    text: str
    finish_reason: str = "stop"     # stop | length | error
    model: str = ""
    error: str | None = None        # set when the request failed after the backend's own retries
    attempts: int = 1


class GenBackend(ABC):
    """A loaded model or a client for one; created once per worker by `GenModelHandler.load_model`."""

    name: str = "base"

    def __init__(self, spec: EndpointConfig):
        self.spec = spec

    @abstractmethod
    def generate(self, requests: Sequence[GenRequest]) -> list[GenResult]:
        """One result per request, same order. Must not raise for per-request failures."""

    def close(self) -> None:  # noqa: B027 - optional hook, not abstract
        pass

    @classmethod
    def check_available(cls, spec: EndpointConfig) -> None:
        """Raise (with the fix in the message) when this worker cannot use the model; run in `load_model`,
        where the model runs, never on the launcher (which may lack vLLM, the GPU or the network path)."""
        return None


class ModelUnavailableError(RuntimeError):
    """A worker cannot load or reach its model: the job fails with this one message, never a silent skip."""


def map_image_parts(messages: Sequence[dict[str, Any]], images: Sequence[bytes],
                    convert: Callable[[bytes], dict[str, Any]]) -> list[dict[str, Any]]:
    """Replace each {"type": "image"} part, in order, by `convert(image bytes)`; other parts pass through.
    The number of image parts must equal the number of images."""
    out: list[dict[str, Any]] = []
    used = 0
    for msg in messages:
        content = msg.get("content")
        if not isinstance(content, list):
            out.append(dict(msg))
            continue
        parts = []
        for part in content:
            if part.get("type") != "image":
                parts.append(dict(part))
                continue
            if used >= len(images):
                raise ValueError(f"{used + 1} image parts but only {len(images)} images")
            parts.append(convert(images[used]))
            used += 1
        out.append({**msg, "content": parts})
    if used != len(images):
        raise ValueError(f"{len(images)} images given but {used} image parts in the messages")
    return out


class GenModelHandler(ModelHandler[GenRequest, PredictionResult, GenBackend]):
    """Beam ModelHandler: one backend per worker process, batched keyed requests."""

    def __init__(self, spec: EndpointConfig, min_batch_size: int = 1, max_batch_size: int = 8,
                 where: str = "backend"):
        self.spec = spec
        self.backend_cls = backend_class(spec.backend, where)   # resolved on the launcher, pickled by reference
        self.where = where
        self._batch = {"min_batch_size": min_batch_size, "max_batch_size": max_batch_size}

    def load_model(self) -> GenBackend:
        """Checks on the worker that the model is there (vLLM installed, checkpoint present, endpoint
        answering and serving the model) and fails the job with one message naming the fix if not."""
        field = self.where.rsplit(".", 1)[0]
        try:
            self.backend_cls.check_available(self.spec)
            return self.backend_cls(self.spec)
        except ModelUnavailableError as e:
            raise ModelUnavailableError(f"{field}: {e}") from None
        except Exception as e:  # noqa: BLE001 - ImportError, missing checkpoint, bad option: say which and how
            raise ModelUnavailableError(
                f"{field}: backend {self.spec.backend!r} (model {self.spec.model!r}) cannot load on this worker: "
                f"{type(e).__name__}: {e}") from e

    def run_inference(self, batch: Sequence[GenRequest], model: GenBackend,
                      inference_args: dict[str, Any] | None = None) -> Iterable[PredictionResult]:
        results = model.generate(batch)
        return [PredictionResult(example=req, inference=res, model_id=self.spec.model)
                for req, res in zip(batch, results)]

    def batch_elements_kwargs(self) -> dict[str, Any]:
        return dict(self._batch)

    def share_model_across_processes(self) -> bool:
        return False
