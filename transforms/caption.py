"""Dense captioning (ShareGPT4V-style): route -> prompt -> cache -> VLM via RunInference -> gates -> provenance."""
from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelHandler, PredictionResult, RunInference

from polycap.prompts import Prompt, PromptError, load_prompt_dir
from polycap.schemas import Caption, OcrResult, Reason, Reject, Sample, now_iso
from polycap.schemas.config import CaptionConfig, CaptionRoute, EndpointConfig, endpoint_of
from polycap.sharding.staging import image_bytes
from polycap.transforms.backends.base import GenBackend, GenModelHandler, GenRequest
from polycap.transforms.backends.gen_openai import served_models  # noqa: F401 - re-exported
from polycap.transforms.cache import ResultCache, cache_key
from polycap.transforms.caption_gates import GateConfig, run_gates
from polycap.transforms.langid import language_name
from polycap.transforms.plumbing import (
    SAMPLES,
    RoutingDoFn,
    StageDoFn,
    apply_stage,
    dead_letters,
    make_reject,
    route_stage,
)

STAGE = "caption"
ENDPOINT_ENV = "POLYCAP_CAPTION_ENDPOINT"
ROUTES: tuple[str, ...] = get_args(CaptionRoute)   # one prompt each: prompts/caption/<route>.yaml
ADDON = "aesthetics"
MAX_ATTEMPTS = 2        # a caption failing a gate is retried once (same prompt, new seed), then rejected
# Source meta keys that may name a route, and the words they may use for it.
META_ROUTE_KEYS = ("caption_route", "route", "category", "domain")
ROUTE_ALIASES = {
    **{r: r for r in ROUTES}, "photo": "general", "text": "text_rich", "scene_text": "text_rich",
    "sign": "text_rich", "poster": "text_rich", "document": "document_chart", "doc": "document_chart",
    "chart": "document_chart", "table": "document_chart", "screenshot": "document_chart",
    "infographic": "document_chart", "diagram": "document_chart", "art": "art_landmark",
    "artwork": "art_landmark", "painting": "art_landmark", "landmark": "art_landmark",
}
JOBS = "jobs"


# ---- routing and prompts (pure) -----------------------------------------------------------------------
def load_caption_prompts(directory: str = "") -> dict[str, Prompt]:
    """The route prompts and the aesthetics add-on; fails naming the missing file."""
    prompts = load_prompt_dir("caption", directory or None)
    missing = [name for name in (*ROUTES, ADDON) if name not in prompts]
    if missing:
        raise PromptError(f"caption.prompts: no {missing[0]}.yaml in {directory or 'prompts/caption'}")
    return prompts


def choose_route(sample: Sample, cfg: CaptionConfig) -> str:
    """Config by source name/kind, then source meta, then OCR text area, else the general photo prompt."""
    explicit = cfg.routes.get(sample.source.name) or cfg.routes.get(sample.source.kind)
    if explicit:
        return explicit
    for key in META_ROUTE_KEYS:
        value = sample.source.meta.get(key)
        if isinstance(value, str) and value.strip().lower() in ROUTE_ALIASES:
            return ROUTE_ALIASES[value.strip().lower()]
    ocr = sample.ocr
    if ocr is not None and ocr.status == "ok" and ocr.lines:
        if ocr.text_area_ratio >= cfg.document_min_area:
            return "document_chart"
        if ocr.text_area_ratio >= cfg.text_rich_min_area:
            return "text_rich"
    return "general"


def ocr_hints(ocr: OcrResult | None, limit: int) -> str:
    lines = [ln.text.strip()[:200] for ln in (ocr.lines if ocr else []) if ln.text.strip()]
    if not lines:
        return "(no text was read)"
    more = f"\n(... {len(lines) - limit} more lines)" if len(lines) > limit else ""
    return "\n".join(f"- {t}" for t in lines[:limit]) + more


@dataclass(frozen=True)
class PromptChoice:
    route: str
    prompt_id: str
    prompt_version: str
    prompt_sha256: str      # of the prompt file(s): any edit re-captions everything
    text: str               # rendered for this sample


def render_prompt(sample: Sample, route: str, prompts: dict[str, Prompt], cfg: CaptionConfig) -> PromptChoice:
    p = prompts[route]
    text = p.render(language=language_name(cfg.lang), ocr_hints=ocr_hints(sample.ocr, cfg.max_ocr_hints))
    pid, version, sha = p.id, str(p.version), p.sha256
    if cfg.aesthetics:
        addon = prompts[ADDON]
        text = f"{text}\n{addon.render()}"
        pid, version = f"{pid}+{addon.id}", f"{version}+{addon.version}"
        sha = hashlib.sha256(f"{p.sha256}+{addon.sha256}".encode()).hexdigest()
    return PromptChoice(route, pid, version, sha, text)


def sampling_params(cfg: CaptionConfig, attempt: int) -> dict[str, Any]:
    temperature = cfg.temperature
    if attempt > 0 and temperature == 0:
        temperature = cfg.retry_temperature  # greedy decoding would only repeat the failed caption
    return {"max_tokens": cfg.max_tokens, "temperature": temperature, "seed": cfg.seed + attempt}


@dataclass(frozen=True)
class CaptionJob:
    """One sample's caption task; carried through batching so results stay keyed to their sample."""
    sample: Sample
    prompt: PromptChoice
    backend: str
    model: str
    params: tuple[dict[str, Any], ...]   # sampling params per attempt
    lang: str = "en"

    def cache_key(self, attempt: int) -> str:
        rendered = hashlib.sha256(self.prompt.text.encode("utf-8")).hexdigest()  # OCR hints included
        return cache_key(self.sample.hashes.sha256, self.backend, self.model, self.prompt.prompt_sha256,
                         rendered, self.params[attempt])

    def request(self, attempt: int) -> GenRequest:
        content = [{"type": "image"}, {"type": "text", "text": self.prompt.text}]
        return GenRequest(key=self.cache_key(attempt), messages=[{"role": "user", "content": content}],
                          images=(image_bytes(self.sample),), params=dict(self.params[attempt]))


def make_job(sample: Sample, prompts: dict[str, Prompt], cfg: CaptionConfig, spec: EndpointConfig) -> CaptionJob:
    choice = render_prompt(sample, choose_route(sample, cfg), prompts, cfg)
    params = tuple(sampling_params(cfg, a) for a in range(MAX_ATTEMPTS))
    return CaptionJob(sample, choice, cfg.backend, spec.model, params, cfg.lang)


# ---- attempts, gates and the outcome (pure) -------------------------------------------------------------
@dataclass(frozen=True)
class Attempt:
    text: str
    finish_reason: str
    model: str
    created: str
    cached: bool
    backend_attempts: int
    reason: Reason | None = None    # None = passed every gate
    detail: str = ""


def evaluate(job: CaptionJob, entry: dict[str, Any], gates: GateConfig) -> Attempt:
    base = {"text": entry.get("text", ""), "finish_reason": entry.get("finish_reason", ""),
            "model": entry.get("model", ""), "created": entry.get("created", ""),
            "cached": bool(entry.get("cached")), "backend_attempts": int(entry.get("backend_attempts", 1))}
    if entry.get("error"):
        return Attempt(**base, reason=Reason.CAPTION_FAILED, detail=str(entry["error"])[:1000])
    failed = run_gates(base["text"], base["finish_reason"], job.sample.ocr, gates)
    return Attempt(**base, reason=failed[0], detail=failed[1]) if failed else Attempt(**base)


def needs_attempt(attempts: list[Attempt]) -> bool:
    if not attempts:
        return True
    last = attempts[-1]
    # backend errors were already retried by the backend; gate failures get one more sample
    return last.reason not in (None, Reason.CAPTION_FAILED) and len(attempts) < MAX_ATTEMPTS


Fetch = Callable[[list[GenRequest]], Sequence["dict[str, Any] | None"]]


def run_attempts(jobs: Sequence[CaptionJob], fetch: Fetch, gates: GateConfig) -> list[list[Attempt] | None]:
    """Attempts per job, batched per round; None for a job whose answer `fetch` could not give (cache miss)."""
    attempts: list[list[Attempt]] = [[] for _ in jobs]
    unresolved: set[int] = set()
    for n in range(MAX_ATTEMPTS):
        todo = [i for i, a in enumerate(attempts) if i not in unresolved and needs_attempt(a)]
        if not todo:
            break
        for i, entry in zip(todo, fetch([jobs[i].request(n) for i in todo])):
            if entry is None:
                unresolved.add(i)
            else:
                attempts[i].append(evaluate(jobs[i], entry, gates))
    return [None if i in unresolved else a for i, a in enumerate(attempts)]


def finish(job: CaptionJob, attempts: list[Attempt], quality: str = "") -> Sample | Reject:
    last = attempts[-1]
    if last.reason is not None:
        history = "; ".join(f"attempt {i + 1}: {a.reason}" for i, a in enumerate(attempts))
        return make_reject(job.sample, STAGE, last.reason, f"{last.detail} ({history})")
    params = job.params[len(attempts) - 1]
    model = last.model or job.model
    p = job.prompt
    cap = Caption(text=last.text.strip(), kind="dense", backend=job.backend, model=model, prompt_id=p.prompt_id,
                  prompt_sha256=p.prompt_sha256, params=params, created=last.created, quality=quality)
    prov = {"backend": job.backend, "model": model, "prompt_id": p.prompt_id, "prompt_version": p.prompt_version,
            "prompt_sha256": p.prompt_sha256, "params": params, "created": last.created,
            "attempts": len(attempts), "backend_attempts": sum(a.backend_attempts for a in attempts),
            "cached": all(a.cached for a in attempts), "route": p.route,
            "gate_failures": [str(a.reason) for a in attempts[:-1]], "quality": quality}
    return dataclasses.replace(job.sample, captions={**job.sample.captions, job.lang: cap},
                               provenance={**job.sample.provenance, STAGE: prov})


def finish_outcome(outcome: tuple[CaptionJob, list[Attempt], str]) -> Sample | Reject:
    job, attempts, quality = outcome
    return finish(job, attempts, quality)


# ---- backend spec and endpoint checks -------------------------------------------------------------------
def resolve_endpoint(cfg: CaptionConfig) -> str:
    return (cfg.endpoint or os.environ.get(ENDPOINT_ENV, "")).rstrip("/")


def caption_endpoint_status(cfg: CaptionConfig) -> tuple[bool, str]:
    """(usable, message) for the run summary; the message never contains the API key."""
    if cfg.backend == "openai":
        endpoint = resolve_endpoint(cfg)
        if not endpoint:
            return False, (f"no caption endpoint configured/reachable: set caption.endpoint or ${ENDPOINT_ENV}")
        try:
            models = served_models(endpoint, cfg.api_key_env)
        except (OSError, ValueError) as e:
            reason = getattr(e, "reason", None) or e
            return False, f"no caption endpoint configured/reachable: GET {endpoint}/models failed ({reason})"
        if cfg.model and models and cfg.model not in models:
            return False, f"caption endpoint {endpoint} does not serve {cfg.model!r} (it serves {', '.join(models)})"
        return True, f"endpoint {endpoint} serves {', '.join(models) or 'no listed models'}"
    if cfg.backend == "local":
        if not cfg.model or not (Path(cfg.model) / "config.json").is_file():
            return False, f"caption.model: {cfg.model!r} is not a local checkpoint directory (no config.json)"
        return True, f"local checkpoint {cfg.model}"
    if cfg.backend == "vllm":
        import importlib.util
        if importlib.util.find_spec("vllm") is None:
            return False, "caption backend vllm is not installed (pip install 'polycap[vllm]' on GPU workers)"
        return True, f"vllm {cfg.model}"
    if cfg.backend == "none":
        return False, "caption.backend is none"
    return True, f"backend {cfg.backend}"   # a backend registered in code (test doubles)


def backend_spec(cfg: CaptionConfig) -> EndpointConfig:
    """Resolved at pipeline construction, so workers need neither the env var nor a /models call."""
    endpoint = resolve_endpoint(cfg)
    model = cfg.model
    if cfg.backend == "openai" and not model and endpoint:
        try:
            model = (served_models(endpoint, cfg.api_key_env) or [""])[0]  # `vllm serve` serves one model
        except (OSError, ValueError):
            pass
    quality = caption_quality(cfg)
    options = {**cfg.options, "quality": quality} if quality else dict(cfg.options)
    return endpoint_of(cfg, model=model, endpoint=endpoint, options=options)


def caption_quality(cfg: CaptionConfig) -> str:
    """The label for every caption: config's, else "smoke" for our tiny offline checkpoints (trainer/tiny.py)."""
    if cfg.quality:
        return cfg.quality
    if cfg.backend == "local" and cfg.model and (Path(cfg.model) / "polycap_tiny.json").is_file():
        return "smoke"
    return ""


# ---- Beam ---------------------------------------------------------------------------------------------
class CaptionModelHandler(ModelHandler[CaptionJob, PredictionResult, GenBackend]):
    """A GenModelHandler over CaptionJobs: cache lookup right before each request, gates, one retry.

    The retry happens inside the same `run_inference` so one model per worker serves both attempts
    (a second RunInference would load a second copy of an in-process vLLM/transformers model).
    """

    def __init__(self, spec: EndpointConfig, cache_root: str | None, gates: GateConfig, quality: str = "",
                 batch_size: int = 8):
        self.gen = GenModelHandler(spec, min_batch_size=batch_size, max_batch_size=batch_size,
                                   where="caption.backend")
        self.spec, self.cache_root, self.gates, self.quality = spec, cache_root, gates, quality

    def load_model(self) -> GenBackend:
        return self.gen.load_model()

    def batch_elements_kwargs(self) -> dict[str, Any]:
        return self.gen.batch_elements_kwargs()

    def share_model_across_processes(self) -> bool:
        return self.gen.share_model_across_processes()

    def fetch(self, model: GenBackend, reqs: list[GenRequest]) -> list[dict[str, Any]]:
        cache = ResultCache(self.cache_root) if self.cache_root else None
        out: list[dict[str, Any]] = [{} for _ in reqs]
        todo: dict[str, list[int]] = {}
        for i, r in enumerate(reqs):
            hit = cache.get(r.key) if cache else None   # checked right before the request (bundle retries)
            if hit is not None:
                out[i] = {**hit, "cached": True}
            else:
                todo.setdefault(r.key, []).append(i)    # same key twice in a batch: one request
        if todo:
            uniq = [reqs[idx[0]] for idx in todo.values()]
            Metrics.counter(STAGE, "requests").inc(len(uniq))
            for req, res in zip(uniq, model.generate(uniq)):
                entry = {"text": res.text, "finish_reason": res.finish_reason, "model": res.model or self.spec.model,
                         "created": now_iso(), "backend_attempts": res.attempts, "error": res.error}
                if cache and res.error is None:
                    cache.put(req.key, entry)           # written once, as soon as the answer exists
                for i in todo[req.key]:
                    out[i] = {**entry, "cached": False}
        return out

    def run_inference(self, batch: Sequence[CaptionJob], model: GenBackend,
                      inference_args: dict[str, Any] | None = None) -> Iterable[PredictionResult]:
        results = run_attempts(batch, lambda reqs: self.fetch(model, reqs), self.gates)
        return [PredictionResult(example=job, inference=(job, attempts, self.quality), model_id=self.spec.model)
                for job, attempts in zip(batch, results)]

    def get_num_bytes(self, batch: Sequence[CaptionJob]) -> int:
        return sum(len(j.sample.image.bytes) or j.sample.image.width * j.sample.image.height // 8 for j in batch)


class _PrepareDoFn(RoutingDoFn):
    """Builds the job; answers it from the cache when every attempt it needs is cached."""

    stage = STAGE

    def __init__(self, cfg: CaptionConfig, prompts: dict[str, Prompt], spec: EndpointConfig, cache_root: str | None,
                 gates: GateConfig, quality: str):
        self.cfg, self.prompts, self.spec, self.cache_root, self.gates = cfg, prompts, spec, cache_root, gates
        self.quality = quality

    def process(self, sample: Sample):
        job = make_job(sample, self.prompts, self.cfg, self.spec)
        if self.cache_root:
            cache = ResultCache(self.cache_root)
            attempts = run_attempts([job], lambda reqs: [_cached(cache, r.key) for r in reqs], self.gates)[0]
            if attempts is not None:
                self.count("cached")
                yield (job, attempts, self.quality)
                return
        yield beam.pvalue.TaggedOutput(JOBS, job)


def _cached(cache: ResultCache, key: str) -> dict[str, Any] | None:
    hit = cache.get(key)
    return None if hit is None else {**hit, "cached": True}


class CaptionImages(beam.PTransform):
    """PCollection[Sample] -> (captioned Samples, Rejects): every input ends in exactly one of them."""

    def __init__(self, cfg: CaptionConfig, output_dir: str):
        super().__init__()
        self.cfg = cfg
        self.prompts = load_caption_prompts(cfg.prompts)   # on the launcher: workers get them pickled
        self.spec = backend_spec(cfg)
        self.gates = GateConfig.from_caption_config(cfg)
        self.cache_root = os.path.join(output_dir, "_cache", STAGE) if cfg.cache else None
        self.quality = caption_quality(cfg)

    def expand(self, pcoll):
        # dead letters of every step (a sample, a failed batch of jobs, an outcome) become internal_error rejects
        prep, prep_rejects = apply_stage(pcoll, "Prepare", _PrepareDoFn(
            self.cfg, self.prompts, self.spec, self.cache_root, self.gates, self.quality), STAGE, JOBS)
        handler = CaptionModelHandler(self.spec, self.cache_root, self.gates, self.quality, self.cfg.batch_size)
        predictions, dlq = prep[JOBS] | "Generate" >> RunInference(handler).with_exception_handling()
        generated = predictions | "Outcomes" >> beam.Map(lambda pr: pr.inference)
        outcomes = (prep[SAMPLES], generated) | "AllOutcomes" >> beam.Flatten()
        done, done_rejects = route_stage(outcomes, "Finish", StageDoFn(finish_outcome, STAGE), STAGE)
        failed = dlq.failed_inferences | "GenerateDeadLetters" >> dead_letters(STAGE)
        return done, (prep_rejects, failed, done_rejects) | "Rejects" >> beam.Flatten()
