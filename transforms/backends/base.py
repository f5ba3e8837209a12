"""The one interface every text-generation backend implements (vllm, openai, local), plus its ModelHandler.

Captioning and translation build `GenRequest`s, hand them to `RunInference(GenModelHandler(spec))`, and
get one `GenResult` per request back, keyed. Backends never raise for a single bad request: the error is
carried in `GenResult.error` so the stage above can retry, gate or reject it with a reason.
"""
from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from apache_beam.ml.inference.base import ModelHandler, PredictionResult

# backend name -> "module:Class"; `spec.backend` may also be a dotted "module:Class" path (test doubles).
REGISTRY = {
    "openai": "polycap.transforms.backends.gen_openai:OpenAIBackend",
    "vllm": "polycap.transforms.backends.gen_vllm:VllmBackend",
    "local": "polycap.transforms.backends.gen_local:LocalBackend",
}


@dataclass(frozen=True)
class BackendSpec:
    backend: str                    # openai | vllm | local | "pkg.module:Class"
    model: str = ""                 # model name (openai/vllm) or checkpoint dir (local, vllm)
    endpoint: str = ""              # base URL for openai-compatible servers, e.g. http://127.0.0.1:8000/v1
    api_key_env: str = ""           # name of the env var holding the API key; the key is never logged
    concurrency: int = 8
    timeout_s: float = 120.0
    max_retries: int = 4
    device: str = "auto"
    options: dict[str, Any] = field(default_factory=dict)  # backend-specific extras (e.g. gguf_file)


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

    def __init__(self, spec: BackendSpec):
        self.spec = spec

    @abstractmethod
    def generate(self, requests: Sequence[GenRequest]) -> list[GenResult]:
        """One result per request, same order. Must not raise for per-request failures."""

    def close(self) -> None:  # noqa: B027 - optional hook, not abstract
        pass


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


def make_backend(spec: BackendSpec) -> GenBackend:
    target = REGISTRY.get(spec.backend, spec.backend)
    if ":" not in target:
        raise ValueError(f"unknown backend {spec.backend!r}: use one of {', '.join(REGISTRY)} "
                         "or a 'module:Class' path")
    mod_name, cls_name = target.split(":", 1)
    cls = getattr(importlib.import_module(mod_name), cls_name)
    return cls(spec)


class GenModelHandler(ModelHandler[GenRequest, PredictionResult, GenBackend]):
    """Beam ModelHandler: one backend per worker process, batched keyed requests."""

    def __init__(self, spec: BackendSpec, min_batch_size: int = 1, max_batch_size: int = 8):
        self.spec = spec
        self._batch = {"min_batch_size": min_batch_size, "max_batch_size": max_batch_size}

    def load_model(self) -> GenBackend:
        return make_backend(self.spec)

    def run_inference(self, batch: Sequence[GenRequest], model: GenBackend,
                      inference_args: dict[str, Any] | None = None) -> Iterable[PredictionResult]:
        results = model.generate(batch)
        return [PredictionResult(example=req, inference=res, model_id=self.spec.model)
                for req, res in zip(batch, results)]

    def batch_elements_kwargs(self) -> dict[str, Any]:
        return dict(self._batch)

    def share_model_across_processes(self) -> bool:
        return False
