"""Translate text units into target languages through a gen backend: mask, chunk, cache, gate, retry once."""
from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference

from polycap.prompts import Prompt, load_prompt_dir
from polycap.schemas import Reason, now_iso
from polycap.schemas.config import EndpointConfig, TranslateConfig, endpoint_of
from polycap.transforms.backends.base import GenModelHandler, GenRequest, GenResult
from polycap.transforms.cache import ResultCache, cache_key
from polycap.transforms.langid import language_name
from polycap.transforms.plumbing import RoutingDoFn, route_stage
from polycap.transforms.protect import (
    Masked,
    check_placeholders,
    compare_spans,
    mask,
    placeholder_ids,
    restore,
)
from polycap.transforms.translate_gates import first_failure

STAGE = "translate"
VERSION = 1
SMOKE_MODELS = re.compile(r"270m|135m|tiny", re.IGNORECASE)   # models that only exercise the path
_PARA = re.compile(r"(\n[ \t]*\n\s*)")
_SENT = re.compile(r"(?<=[.!?])(\s+)")
_LINE = re.compile(r"[^\n]*\n*")
COMPLETION_PROMPT = "completion"    # prompts/translate/completion.yaml: few-shot pairs for base LMs
COMPLETION_STOP = ["\n"]           # completion texts go one line at a time; the answer ends at the newline


@dataclass(frozen=True)
class TextUnit:
    key: str                        # unique per text, e.g. "<record id>/conversations/3/value"
    text: str


@dataclass(frozen=True)
class Translated:
    key: str
    lang: str
    text: str | None                # None when the translation failed its gates
    reason: str | None = None       # Reason value when failed
    detail: str = ""
    provenance: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class _Chunk:
    unit_key: str
    unit_text: str
    lang: str
    index: int
    count: int
    masked: Masked                  # the whole unit's masked text and spans (ids are unit-global)
    sent: str                       # masked chunk sent to the model (whitespace stripped)
    lead: str                       # whitespace around `sent`, and the separator after it
    trail: str
    attempt: int = 1
    prev_reason: str = ""


@dataclass(frozen=True)
class _ChunkDone:
    chunk: _Chunk
    text: str | None
    reason: str | None = None
    detail: str = ""
    cached: bool = False


# -- pure core -------------------------------------------------------------------------------------
def split_paragraphs(text: str, max_chars: int) -> list[str]:
    """Pieces whose concatenation is `text`, split after blank lines (then sentences) near `max_chars`."""
    parts = _PARA.split(text)
    pieces = ["".join(parts[i:i + 2]) for i in range(0, len(parts), 2)]
    out: list[str] = []
    for p in pieces:
        if len(p) > max_chars:
            sents = _SENT.split(p)
            p_parts = ["".join(sents[i:i + 2]) for i in range(0, len(sents), 2)]
        else:
            p_parts = [p]
        for q in p_parts:
            if out and len(out[-1]) + len(q) <= max_chars:
                out[-1] += q
            else:
                out.append(q)
    return [p for p in out if p] or [text]


def split_lines(text: str, max_chars: int) -> list[str]:
    """Pieces whose concatenation is `text`, one line each (with its newlines); long lines split as above."""
    lines = [m for m in _LINE.findall(text) if m]
    return [q for line in lines for q in split_paragraphs(line, max_chars)] or [text]


def plan_chunks(unit: TextUnit, lang: str, max_chars: int, by_line: bool = False) -> list[_Chunk]:
    """A unit's chunks for one language; `by_line` for completion prompts, whose answers end at a newline."""
    masked = mask(unit.text)
    pieces = (split_lines if by_line else split_paragraphs)(masked.text, max_chars)
    chunks = []
    for i, piece in enumerate(pieces):
        core = piece.strip()
        lead = piece[: len(piece) - len(piece.lstrip())]
        trail = piece[len(piece.rstrip()):] if core else ""
        chunks.append(_Chunk(unit.key, unit.text, lang, i, len(pieces), masked, core, lead, trail))
    return chunks


def needs_model(chunk: _Chunk) -> bool:
    """Only placeholders, digits, punctuation: nothing to translate (e.g. a turn that is just `<image>`)."""
    rest = re.sub(r"\[\[P\d+\]\]", "", chunk.sent)
    return any(c.isalpha() for c in rest)


def glossary_text(glossary: dict[str, str]) -> str:
    if not glossary:
        return ""
    pairs = "; ".join(f"{k} -> {v}" for k, v in sorted(glossary.items()))
    return f"- Glossary, always use these translations: {pairs}."


def system_prompt(prompt: Prompt, lang: str, glossary: dict[str, str], strict_reason: str = "") -> str:
    values = {"language": language_name(lang), "glossary": glossary_text(glossary),
              "reason": strict_reason}
    if strict_reason:
        strict = Prompt(prompt.id, prompt.version, str(prompt.meta["strict_template"]), prompt.sha256,
                        prompt.path)
        return strict.render(**values).strip()
    return prompt.render(**values).strip()


def prompt_style(cfg: TranslateConfig) -> str:
    """"chat" (system + user messages) or "completion" (few-shot text for a base LM that has no chat template)."""
    from polycap.transforms.backends.gen_local import GEMMA_GGUF_ALIAS

    if cfg.prompt_style == "auto":
        base = cfg.backend == "local" and (cfg.model == GEMMA_GGUF_ALIAS or bool(cfg.options.get("base_model")))
        return "completion" if base else "chat"
    return cfg.prompt_style


def completion_text(prompt: Prompt, lang: str, text: str, glossary: dict[str, str], strict: bool) -> str:
    """The few-shot prompt for one line: example pairs for `lang`, then `English: <text>` and the cue."""
    name = language_name(lang)
    pairs = (prompt.meta.get("examples") or {}).get(lang) or []
    examples = "".join(f"English: {en}\n{name}: {tr}\n\n" for en, tr in pairs)
    gloss = "".join(f"English: {k}\n{name}: {v}\n\n" for k, v in sorted(glossary.items()))
    template = str(prompt.meta["strict_template"]) if strict else prompt.template
    return template.format(language=name, examples=examples, glossary=gloss, text=text)


def gen_params(cfg: TranslateConfig) -> dict[str, Any]:
    params: dict[str, Any] = {"max_tokens": cfg.max_tokens, "temperature": cfg.temperature, "seed": 0}
    if prompt_style(cfg) == "completion":
        params["stop"] = COMPLETION_STOP
    return params


def chunk_cache_key(chunk: _Chunk, cfg: TranslateConfig, prompt: Prompt) -> str:
    """(text sha256, target, backend+model, prompt sha256 + variant, glossary, params)."""
    text_sha = hashlib.sha256(chunk.sent.encode("utf-8")).hexdigest()
    variant = "strict" if chunk.attempt > 1 else "normal"
    return cache_key(STAGE, VERSION, text_sha, chunk.lang, cfg.backend, cfg.model, prompt.sha256, variant,
                     cfg.glossary.get(chunk.lang, {}), gen_params(cfg), chunk.prev_reason)


def build_request(chunk: _Chunk, cfg: TranslateConfig, prompt: Prompt, key: str) -> GenRequest:
    glossary = cfg.glossary.get(chunk.lang, {})
    if prompt_style(cfg) == "completion":
        text = completion_text(prompt, chunk.lang, chunk.sent, glossary, strict=chunk.attempt > 1)
        return GenRequest(key=key, messages=[{"role": "user", "content": text}], params=gen_params(cfg))
    system = system_prompt(prompt, chunk.lang, glossary, chunk.prev_reason)
    return GenRequest(key=key, messages=[{"role": "system", "content": system},
                                         {"role": "user", "content": chunk.sent}], params=gen_params(cfg))


def judge(chunk: _Chunk, result: GenResult) -> tuple[str | None, Reason | None, str]:
    """(restored text, None, "") if the model output passes every gate, else (None, reason, detail)."""
    if result.error:
        return None, Reason.TRANSLATE_FAILED, result.error[:500]
    out = result.text.strip()
    bad = check_placeholders(chunk.masked, out, placeholder_ids(chunk.sent))
    if bad and out:
        return None, Reason.GATE_SPANS_CHANGED, bad
    source = restore(chunk.masked, chunk.sent)
    restored = restore(chunk.masked, out)
    failure = first_failure(source, restored, chunk.lang, result.finish_reason)
    if failure is not None:
        return None, failure[0], failure[1]
    return restored, None, ""


def assemble(unit_key: str, lang: str, done: list[_ChunkDone], provenance: dict[str, Any]) -> Translated:
    """Join a unit's chunks in order; the first failed chunk fails the whole unit."""
    done = sorted(done, key=lambda d: d.chunk.index)
    prov = dict(provenance, chunks=len(done), attempts=max(d.chunk.attempt for d in done),
                cached=all(d.cached for d in done), created=now_iso())
    for d in done:
        if d.text is None:
            return Translated(unit_key, lang, None, d.reason, f"chunk {d.chunk.index + 1}/{d.chunk.count}: "
                              f"{d.detail}", prov)
    text = "".join(d.chunk.lead + (d.text or "") + d.chunk.trail for d in done)
    source = done[0].chunk.unit_text
    bad = compare_spans(source, text)
    if bad:
        return Translated(unit_key, lang, None, str(Reason.GATE_SPANS_CHANGED), bad, prov)
    return Translated(unit_key, lang, text, None, "", prov)


def backend_spec(cfg: TranslateConfig) -> EndpointConfig:
    return endpoint_of(cfg, options=dict(cfg.options))


def provenance_for(cfg: TranslateConfig, prompt: Prompt) -> dict[str, Any]:
    name = f"{cfg.model} {cfg.options.get('gguf_file', '')}"
    return {"backend": cfg.backend, "model": cfg.model, "prompt_id": prompt.id, "prompt_sha256": prompt.sha256,
            "params": gen_params(cfg), "version": VERSION, "translated_from": "en",
            "quality": "smoke" if SMOKE_MODELS.search(name) else "", "prompt_style": prompt_style(cfg)}


def prompts_for(cfg: TranslateConfig, langs: list[str]) -> dict[str, Prompt]:
    """Prompt per target language: `<lang>.yaml`, else `generic.yaml`; loaded once on the driver."""
    all_prompts = load_prompt_dir("translate", cfg.prompts or None)
    if prompt_style(cfg) == "completion":
        if COMPLETION_PROMPT not in all_prompts:
            raise ValueError(f"translate.prompt_style completion needs {COMPLETION_PROMPT}.yaml in the prompts dir")
        return {lang: all_prompts[COMPLETION_PROMPT] for lang in langs}
    return {lang: all_prompts.get(lang) or all_prompts["generic"] for lang in langs}


# -- Beam ------------------------------------------------------------------------------------------
REQUESTS = "requests"
_VERDICTS_KEPT = 20_000   # judged (chunk, answer) pairs a worker remembers (texts of a few KB each)


class _AdvanceFn(beam.DoFn):
    """Moves one chunk along: cache lookup, judge a result, retry once with the strict prompt, or finish.

    Input: a `_Chunk` (fresh) or `(_Chunk, PredictionResult)` (a model answered). Outputs `_ChunkDone`s
    on the main output and `(chunk, GenRequest)` on REQUESTS when the model must be asked.
    """

    def __init__(self, cfg: TranslateConfig, prompts: dict[str, Prompt], cache_root: str | None):
        self.cfg, self.prompts, self.cache_root = cfg, prompts, cache_root
        self.cache: ResultCache | None = None
        self.verdicts: dict[tuple, tuple[str | None, Reason | None, str]] = {}

    def setup(self):
        self.cache = ResultCache(self.cache_root) if (self.cache_root and self.cfg.cache) else None
        self.verdicts = {}
        self.c_req = Metrics.counter(STAGE, "requests")
        self.c_hit = Metrics.counter(STAGE, "cache_hits")
        self.c_retry = Metrics.counter(STAGE, "retries")

    def process(self, element) -> Iterator[Any]:
        if isinstance(element, _Chunk):
            chunk, result, fresh = element, None, False
        else:
            chunk, pred = element
            result, fresh = pred.inference, True
        while True:
            if not needs_model(chunk):
                yield _ChunkDone(chunk, restore(chunk.masked, chunk.sent))
                return
            prompt = self.prompts[chunk.lang]
            key = chunk_cache_key(chunk, self.cfg, prompt)
            if result is None and self.cache is not None:
                hit = self.cache.get(key)
                if hit is not None:
                    self.c_hit.inc()
                    result = GenResult(key=key, text=hit["text"], finish_reason=hit["finish_reason"],
                                       model=hit.get("model", ""))
            if result is None:
                self.c_req.inc()
                yield beam.pvalue.TaggedOutput(REQUESTS, (chunk, build_request(chunk, self.cfg, prompt, key)))
                return
            if fresh and self.cache is not None and not result.error:
                self.cache.put(key, {"text": result.text, "finish_reason": result.finish_reason,
                                     "model": result.model})
            text, reason, detail = self._judge(chunk, result)
            if reason is None or chunk.attempt > 1 or reason == Reason.TRANSLATE_FAILED:
                yield _ChunkDone(chunk, text, str(reason) if reason else None, detail, cached=not fresh)
                return
            self.c_retry.inc()
            chunk = replace(chunk, attempt=2, prev_reason=str(reason))
            result, fresh = None, False

    def _judge(self, chunk: _Chunk, result: GenResult) -> tuple[str | None, Reason | None, str]:
        """`judge`, remembered per worker for the same chunk of the same text and the same answer: a dataset
        repeats its prompts ("Describe the image in detail." thousands of times), and their cached
        answers would otherwise run every gate again."""
        if result.error:
            return judge(chunk, result)
        memo = (chunk.unit_text, chunk.index, chunk.count, chunk.lang, result.text, result.finish_reason)
        verdict = self.verdicts.get(memo)
        if verdict is None:
            verdict = judge(chunk, result)
            if len(self.verdicts) >= _VERDICTS_KEPT:
                self.verdicts.clear()
            self.verdicts[memo] = verdict
        return verdict


class _AssembleFn(RoutingDoFn):
    """Text units are counted `texts_kept` / `texts_dropped_<reason>`: `translate/kept` counts samples."""

    stage = STAGE

    def __init__(self, provenance: dict[str, dict[str, Any]]):
        self.provenance = provenance

    def process(self, element) -> Iterator[Translated]:
        if isinstance(element, _ChunkDone):   # a unit of one chunk: no grouping needed
            unit_key, lang, done = element.chunk.unit_key, element.chunk.lang, [element]
        else:
            (unit_key, lang), done = element
        out = assemble(unit_key, lang, list(done), self.provenance[lang])
        self.count("texts_kept" if out.text is not None else f"texts_dropped_{out.reason}")
        yield out


class TranslateTexts(beam.PTransform):
    """PCollection[TextUnit] -> PCollection[Translated], one per (unit, target language)."""

    def __init__(self, cfg: TranslateConfig, cache_root: str | None = None, langs: list[str] | None = None):
        super().__init__()
        self.cfg = cfg
        self.langs = list(langs or cfg.to)
        self.cache_root = cache_root
        self.prompts = prompts_for(cfg, self.langs)

    def _generate(self, jobs: beam.PCollection, label: str) -> beam.PCollection:
        # fixed-size batches: BatchElements would otherwise start at 1 and grow, which for the local backend
        # (one left-padded `generate` per batch) costs a full decode per request until it has grown
        size = self.cfg.batch_size
        handler: Any = KeyedModelHandler(GenModelHandler(backend_spec(self.cfg), min_batch_size=size,
                                                         max_batch_size=size, where="translate.backend"))
        return jobs | f"{label}Infer" >> RunInference(handler)

    def expand(self, units):
        cfg, langs = self.cfg, self.langs
        advance = _AdvanceFn(cfg, self.prompts, self.cache_root)
        by_line = prompt_style(cfg) == "completion"
        chunks = units | "Chunk" >> beam.FlatMap(
            lambda u: [c for lang in langs for c in plan_chunks(u, lang, cfg.max_chunk_chars, by_line)])
        first = chunks | "Plan" >> beam.ParDo(advance).with_outputs(REQUESTS, main="done")
        answered = self._generate(first[REQUESTS], "First")
        second = answered | "Judge" >> beam.ParDo(advance).with_outputs(REQUESTS, main="done")
        answered2 = self._generate(second[REQUESTS], "Retry")
        third = answered2 | "JudgeRetry" >> beam.ParDo(advance).with_outputs(REQUESTS, main="done")
        done = (first["done"], second["done"], third["done"]) | "AllChunks" >> beam.Flatten()
        provenance = {lang: provenance_for(cfg, p) for lang, p in self.prompts.items()}
        # most units are one chunk: those are assembled where they finish, only split ones are grouped
        single, split = done | "OneChunk" >> beam.Partition(lambda d, _: 0 if d.chunk.count == 1 else 1, 2)
        whole = single | "AssembleOne" >> beam.ParDo(_AssembleFn(provenance))
        joined = (split
                  | "ByUnit" >> beam.Map(lambda d: ((d.chunk.unit_key, d.chunk.lang), d))
                  | "Group" >> beam.GroupByKey()
                  | "Assemble" >> beam.ParDo(_AssembleFn(provenance)))
        return (whole, joined) | "Translated" >> beam.Flatten()


# -- samples (polycap run) -------------------------------------------------------------------------
def sample_units(sample) -> list[TextUnit]:
    """The English caption and each English conversation turn of a Sample, as text units."""
    units = []
    cap = sample.captions.get("en")
    if cap is not None and cap.text:
        units.append(TextUnit(f"{sample.key}/caption", cap.text))
    for i, turn in enumerate(sample.conversations.get("en", [])):
        units.append(TextUnit(f"{sample.key}/conv/{i}", turn["value"]))
    return units


def merge_sample(sample, results: list[Translated], langs: list[str], reject_when_all_failed: bool = True):
    """Sample with captions[lang] / conversations[lang] added for every language whose texts all passed.

    Decision: a language whose translation failed is left out and recorded in
    `provenance["translate"]["failed"][lang]`; the sample is kept while at least one target language
    (or there was nothing to translate) succeeded, and becomes a Reject only when every language failed
    (`reject_when_all_failed=False`, for `polycap translate` on shards: the sample is kept with its other
    captions). A caption the sample already had in a language whose translation failed is kept as it was.
    An earlier translation's provenance (a shard translated again) is kept for the languages not redone.
    """
    from polycap.schemas import Caption
    from polycap.transforms.plumbing import make_reject

    before = sample.provenance.get(STAGE) or {}
    prov: dict[str, dict[str, Any]] = {
        part: {k: v for k, v in old.items() if k not in langs} if isinstance(old := before.get(part), dict) else {}
        for part in ("langs", "failed")}
    captions, convs = dict(sample.captions), dict(sample.conversations)
    for lang in langs:
        mine = {r.key.split("/", 1)[1]: r for r in results if r.lang == lang}
        bad = sorted((r for r in mine.values() if r.text is None), key=lambda r: r.key)
        if bad:
            prov["failed"][lang] = {"reason": bad[0].reason, "detail": bad[0].detail,
                                    "failed_texts": len(bad), "texts": len(mine)}
            continue
        if not mine:
            continue
        p = next(iter(mine.values())).provenance
        prov["langs"][lang] = p
        if "caption" in mine:
            captions[lang] = Caption(text=mine["caption"].text or "", kind="translation", backend=p["backend"],
                                     model=p["model"], prompt_id=p["prompt_id"], prompt_sha256=p["prompt_sha256"],
                                     translated_from="en", params=p["params"], created=p.get("created", ""),
                                     quality=p.get("quality", ""))
        turns = sample.conversations.get("en", [])
        if turns:
            convs[lang] = [dict(t, value=mine[f"conv/{i}"].text) for i, t in enumerate(turns)]
        elif "caption" in mine:
            convs.pop(lang, None)   # built from the caption it replaces: BuildRecords builds it again
    if reject_when_all_failed and results and all(lang in prov["failed"] for lang in langs):
        first = prov["failed"][langs[0]]
        return make_reject(sample, STAGE, Reason(first["reason"]),
                           "; ".join(f"{lang}: {v['reason']} {v['detail']}" for lang, v in prov["failed"].items()))
    return replace(sample, captions=captions, conversations=convs,
                   provenance={**sample.provenance, STAGE: prov})


class _MergeSamplesFn(RoutingDoFn):
    stage = STAGE

    def __init__(self, langs: list[str]):
        self.langs = langs

    def process(self, element):
        _, grouped = element
        for sample in grouped["sample"]:
            yield self.route(merge_sample(sample, list(grouped["results"]), self.langs))


class TranslateSamples(beam.PTransform):
    """PCollection[Sample] -> (samples with captions/conversations per target language, rejects)."""

    def __init__(self, cfg: TranslateConfig, output_dir: str):
        super().__init__()
        self.cfg, self.output_dir = cfg, output_dir

    def expand(self, samples):
        cache = f"{self.output_dir.rstrip('/')}/_cache/translate"
        results = (samples | "Units" >> beam.FlatMap(sample_units)
                   | "Texts" >> TranslateTexts(self.cfg, cache, list(self.cfg.to))
                   | "BySample" >> beam.Map(lambda r: (r.key.split("/", 1)[0], r)))
        keyed = samples | "KeySamples" >> beam.Map(lambda s: (s.key, s))
        joined = {"sample": keyed, "results": results} | "Join" >> beam.CoGroupByKey()
        return route_stage(joined, "Merge", _MergeSamplesFn(list(self.cfg.to)), STAGE)
