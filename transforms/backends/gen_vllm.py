"""In-process vLLM backend for GPU workers: batched `LLM.chat` with image parts and per-request sampling params."""
from __future__ import annotations

import io
import logging
import os
import threading
from collections.abc import Sequence
from typing import Any

from polycap.schemas.config import EndpointConfig
from polycap.transforms.backends.base import GenBackend, GenRequest, GenResult, map_image_parts

log = logging.getLogger(__name__)

# Request params SamplingParams takes as they are (vLLM >= 0.6 names); everything else is refused up front
# so a typo in config does not silently fall back to a default.
_SAMPLING_KEYS = ("max_tokens", "temperature", "top_p", "top_k", "min_p", "seed", "stop", "stop_token_ids",
                  "repetition_penalty", "presence_penalty", "frequency_penalty", "min_tokens")
# `spec.options` keys handed to `vllm.LLM(...)`; others (quality, model_name, image_part) are ours.
_LLM_KEYS = ("max_model_len", "gpu_memory_utilization", "dtype", "limit_mm_per_prompt", "trust_remote_code",
             "tensor_parallel_size", "enforce_eager", "max_num_seqs", "mm_processor_kwargs", "seed",
             "quantization", "tokenizer", "kv_cache_dtype")
VLLM_MISSING = ("backend 'vllm' needs vLLM on a GPU worker: run the workers on the image built from "
                "Dockerfile.gpu (`--sdk_container_image`), or `pip install polycap[vllm]` there (pulls CUDA torch)")


# -- pure request building (tested without vLLM) --------------------------------------------------
def decode_image(data: bytes) -> Any:
    from PIL import Image

    img = Image.open(io.BytesIO(data))
    img.load()
    return img.convert("RGB")


def to_vllm_messages(messages: Sequence[dict[str, Any]], images: Sequence[bytes],
                     image_part: str = "pil") -> list[dict[str, Any]]:
    """Chat messages for `LLM.chat`: each {"type": "image"} part, in order, becomes an `image_pil` part
    (a decoded PIL image; vLLM >= 0.8) or, with image_part="data_url", an OpenAI `image_url` part."""
    from polycap.transforms.backends.gen_openai import image_data_url

    def convert(data: bytes) -> dict[str, Any]:
        if image_part == "data_url":
            return {"type": "image_url", "image_url": {"url": image_data_url(data)}}
        return {"type": "image_pil", "image_pil": decode_image(data)}

    return map_image_parts(messages, images, convert)


def sampling_kwargs(params: dict[str, Any]) -> dict[str, Any]:
    """Request params -> `SamplingParams(**kwargs)`; temperature 0 (or unset) is greedy, a seed is per request."""
    unknown = sorted(set(params) - set(_SAMPLING_KEYS))
    if unknown:
        raise ValueError(f"unsupported sampling params for vllm: {unknown}")
    kwargs = {k: v for k, v in params.items() if v is not None}
    kwargs["temperature"] = float(kwargs.get("temperature") or 0.0)
    if kwargs["temperature"] == 0.0:
        kwargs.pop("top_p", None)  # greedy: nucleus settings are meaningless
        kwargs.pop("top_k", None)
    kwargs.setdefault("max_tokens", 256)
    return kwargs


def llm_kwargs(spec: EndpointConfig) -> dict[str, Any]:
    """`vllm.LLM(**kwargs)` from the spec: the model path/name plus the engine options we pass through."""
    kwargs = {k: v for k, v in spec.options.items() if k in _LLM_KEYS}
    kwargs["model"] = spec.model
    return kwargs


def result_from_output(key: str, output: Any, model: str) -> GenResult:
    """GenResult from a vLLM RequestOutput (its first completion)."""
    if not getattr(output, "outputs", None):
        return GenResult(key, "", "error", model, "vLLM returned no completion")
    completion = output.outputs[0]
    finish = completion.finish_reason or "stop"
    if finish not in ("stop", "length"):  # e.g. "abort"
        return GenResult(key, completion.text or "", "error", model, f"vLLM finish_reason={finish}")
    return GenResult(key, completion.text, finish, model, None)


# -- the backend -----------------------------------------------------------------------------------
class VllmBackend(GenBackend):
    """One `vllm.LLM` per worker process; a batch of requests is one `LLM.chat` call.

    `spec.options`: engine kwargs (`max_model_len`, `gpu_memory_utilization`, `limit_mm_per_prompt`,
    `dtype`, ...), `image_part` ("pil" default, "data_url" for older vLLM), `model_name`, `quality`.
    """

    name = "vllm"

    def __init__(self, spec: EndpointConfig, llm: Any = None, sampling_params_cls: Any = None):
        """`llm` / `sampling_params_cls` let tests inject fakes; by default both come from vllm (lazily)."""
        super().__init__(spec)
        if not spec.model:
            raise ValueError("backend 'vllm' needs `model` (a HF model id or checkpoint dir)")
        self.model_id = spec.options.get("model_name") or spec.model
        self.quality: str | None = "smoke" if spec.options.get("quality") == "smoke" else None
        self._image_part = spec.options.get("image_part", "pil")
        if llm is None or sampling_params_cls is None:
            try:
                import vllm  # type: ignore[import-not-found]
            except ImportError as exc:
                raise ImportError(VLLM_MISSING) from exc
            sampling_params_cls = sampling_params_cls or vllm.SamplingParams
            llm = llm or vllm.LLM(**llm_kwargs(spec))
        self._sampling_params = sampling_params_cls
        self._lock = threading.Lock()
        self.llm = llm

    @classmethod
    def check_available(cls, spec: EndpointConfig) -> None:
        """On the worker: vLLM importable and a checkpoint path (not a hub id) present."""
        import importlib.util

        from polycap.transforms.backends.base import ModelUnavailableError

        if importlib.util.find_spec("vllm") is None:
            raise ModelUnavailableError(VLLM_MISSING)
        if spec.model.startswith(("/", "./")) and not os.path.isdir(spec.model):
            raise ModelUnavailableError(
                f"backend 'vllm': checkpoint {spec.model} is not on this worker: bake it into the worker image "
                "(Dockerfile.gpu copies ./models to /models) or mount it at that path on every worker")

    def generate(self, requests: Sequence[GenRequest]) -> list[GenResult]:
        with self._lock:  # vllm.LLM is not thread-safe; RunInference may share it between threads
            return self._generate_all(requests)

    def _generate_all(self, requests: Sequence[GenRequest]) -> list[GenResult]:
        results: dict[int, GenResult] = {}
        ready: list[tuple[int, list[dict[str, Any]], Any]] = []
        for i, req in enumerate(requests):
            try:
                msgs = to_vllm_messages(req.messages, req.images, self._image_part)
                ready.append((i, msgs, self._sampling_params(**sampling_kwargs(req.params))))
            except Exception as exc:  # noqa: BLE001 - a bad request is an error result, not a crash
                results[i] = GenResult(req.key, "", "error", self.model_id, f"bad request: {exc}")
        if ready:
            for i, res in self._run(requests, ready):
                results[i] = res
        return [results[i] for i in range(len(requests))]

    def _run(self, requests: Sequence[GenRequest], ready: list[tuple[int, Any, Any]]):
        try:
            outputs = self.llm.chat([m for _, m, _ in ready], sampling_params=[p for _, _, p in ready],
                                    use_tqdm=False)
            return [(i, result_from_output(requests[i].key, out, self.model_id))
                    for (i, _, _), out in zip(ready, outputs)]
        except Exception as exc:  # noqa: BLE001 - retry one by one so one bad prompt cannot sink the batch
            if len(ready) == 1:
                i = ready[0][0]
                return [(i, GenResult(requests[i].key, "", "error", self.model_id, f"{type(exc).__name__}: {exc}"))]
            log.warning("vLLM batch of %d failed (%s); retrying one request at a time", len(ready), exc)
            return [pair for item in ready for pair in self._run(requests, [item])]
