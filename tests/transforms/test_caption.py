"""Caption stage: routing, prompts, cache keys, attempts/gates, the handler's cache discipline, the PTransform."""
from __future__ import annotations

import dataclasses
import io
import threading
from collections.abc import Sequence
from typing import ClassVar

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to

from polycap.schemas import OcrLine, OcrResult, Reason, Reject, Sample
from polycap.schemas.config import CaptionConfig, ConfigError, EndpointConfig
from polycap.transforms.backends.base import GenBackend, GenRequest, GenResult, register_backend
from polycap.transforms.build_records import carry_source_captions
from polycap.transforms.caption import (
    CaptionImages,
    CaptionModelHandler,
    caption_endpoint_status,
    choose_route,
    load_caption_prompts,
    make_job,
    render_prompt,
    run_attempts,
)
from polycap.transforms.caption_gates import GateConfig
from tests.conftest import jpeg_bytes, make_sample
from tests.fakes.openai_server import REFUSAL, FakeOpenAIServer, default_caption

FAKE = "fake-caption"
LOOP = "The bowl is white. " * 30


def image_width(data: bytes) -> int:
    from PIL import Image

    return Image.open(io.BytesIO(data)).width


class FakeCaptionBackend(GenBackend):
    """A fake captioner (not a model). Behaviour by image width: 100 good caption; 101 refusal at seed 0,
    good at seed 1; 102 a loop at every seed; 103 a backend error; 104 crashes the whole batch."""

    name = "fake"
    calls: ClassVar[list[GenRequest]] = []
    lock = threading.Lock()

    def generate(self, requests: Sequence[GenRequest]) -> list[GenResult]:
        out = []
        for r in requests:
            with self.lock:
                FakeCaptionBackend.calls.append(r)
            w, seed = image_width(r.images[0]), r.params.get("seed")
            text = default_caption({"messages": [{"role": "user", "content": [
                {"type": "text", "text": r.messages[0]["content"][1]["text"] + r.key}]}]})
            if w == 101 and seed == 0:
                text = REFUSAL
            elif w == 102:
                text = LOOP
            if w == 104:
                raise RuntimeError("CUDA error: device-side assert triggered")
            if w == 103:
                out.append(GenResult(r.key, "", "error", "fake-vlm", "HTTP 500 after 5 attempts", attempts=5))
            else:
                out.append(GenResult(r.key, text, "stop", "fake-vlm", None, attempts=1))
        return out


register_backend(FAKE, FakeCaptionBackend)


@pytest.fixture(autouse=True)
def _reset_fake():
    FakeCaptionBackend.calls = []


def photo(width: int = 100, color=(200, 30, 30), **kw) -> Sample:
    return make_sample(jpeg_bytes(width, 80, color), uri=f"mem://{width}-{color}", **kw)


def ocr(ratio: float, *lines: str, status: str = "ok") -> OcrResult:
    return OcrResult(engine="test", status=status, text_area_ratio=ratio,
                     lines=[OcrLine(text=t, box=[0, 0, 9, 9], quad=[0, 0, 9, 0, 9, 9, 0, 9], score=0.9)
                            for t in lines])


def cfg(**kw) -> CaptionConfig:
    return CaptionConfig(**{"enabled": True, "backend": FAKE, "model": "fake-vlm", **kw})


# ---- routing and prompts ------------------------------------------------------------------------------
def test_routes_from_config_meta_and_ocr():
    c = cfg(routes={"wikiart": "art_landmark"})
    assert choose_route(photo(), c) == "general"
    assert choose_route(photo(name="wikiart"), c) == "art_landmark"
    assert choose_route(photo(meta={"category": "Chart"}), c) == "document_chart"
    assert choose_route(photo(meta={"caption_route": "text_rich"}), c) == "text_rich"
    s = photo()
    assert choose_route(dataclasses.replace(s, ocr=ocr(0.05, "OPEN")), c) == "text_rich"
    assert choose_route(dataclasses.replace(s, ocr=ocr(0.40, "Invoice")), c) == "document_chart"
    assert choose_route(dataclasses.replace(s, ocr=ocr(0.01, "x")), c) == "general"
    assert choose_route(dataclasses.replace(s, ocr=ocr(0.5, status="failed")), c) == "general"
    with pytest.raises(ConfigError, match="routes.wikiart: 'paintings' is not one of general"):
        cfg(routes={"wikiart": "paintings"})


def test_prompt_rendering_injects_ocr_and_addon():
    prompts = load_caption_prompts()
    s = dataclasses.replace(photo(), ocr=ocr(0.1, "MOTEL", "VACANCY"))
    plain = render_prompt(s, "text_rich", prompts, cfg())
    assert "- MOTEL\n- VACANCY" in plain.text and "English" in plain.text
    assert plain.prompt_sha256 == prompts["text_rich"].sha256 and plain.prompt_id == "caption-text-rich"
    addon = render_prompt(s, "text_rich", prompts, cfg(aesthetics=True))
    assert addon.text.startswith(plain.text) and prompts["aesthetics"].template in addon.text
    assert addon.prompt_sha256 != plain.prompt_sha256 and addon.prompt_id.endswith("+caption-aesthetics")


def test_cache_key_covers_image_model_prompt_and_params():
    prompts, spec = load_caption_prompts(), EndpointConfig(backend=FAKE, model="fake-vlm")
    job = make_job(photo(), prompts, cfg(), spec)
    assert job.cache_key(0) == make_job(photo(), prompts, cfg(), spec).cache_key(0)
    assert job.cache_key(0) != job.cache_key(1)                      # retry seed
    others = [make_job(photo(color=(0, 0, 255)), prompts, cfg(), spec),
              make_job(photo(), prompts, cfg(), EndpointConfig(backend=FAKE, model="other")),
              make_job(photo(), prompts, cfg(temperature=0.7), spec),
              make_job(photo(), prompts, cfg(aesthetics=True), spec)]
    assert len({job.cache_key(0), *(o.cache_key(0) for o in others)}) == 5
    edited = dict(prompts, general=dataclasses.replace(prompts["general"], sha256="0" * 64))
    assert make_job(photo(), edited, cfg(), spec).cache_key(0) != job.cache_key(0)
    req = job.request(0)
    assert req.images == (job.sample.image.bytes,) and req.messages[0]["content"][0] == {"type": "image"}
    assert req.params == {"max_tokens": 512, "temperature": 0.2, "seed": 0}


# ---- attempts -----------------------------------------------------------------------------------------
def scripted_fetch(answers):
    """A fetch that answers each request from a list, in order (None = cache miss)."""
    it = iter(answers)
    return lambda reqs: [next(it) for _ in reqs]


def good(seed=0):
    return {"text": default_caption({"messages": [{"content": f"s{seed}"}]}), "finish_reason": "stop",
            "model": "m", "created": "t"}


def test_attempts_retry_once_on_gate_failure_then_reject():
    job = make_job(photo(), load_caption_prompts(), cfg(), EndpointConfig(backend=FAKE, model="m"))
    g = GateConfig()
    [ok] = run_attempts([job], scripted_fetch([good()]), g)
    assert len(ok) == 1 and ok[0].reason is None
    [retried] = run_attempts([job], scripted_fetch([{"text": REFUSAL, "finish_reason": "stop"}, good(1)]), g)
    assert [a.reason for a in retried] == [Reason.GATE_REFUSAL, None]
    [bad] = run_attempts([job], scripted_fetch([{"text": LOOP, "finish_reason": "stop"}] * 2), g)
    assert [a.reason for a in bad] == [Reason.GATE_REPETITION] * 2
    [err] = run_attempts([job], scripted_fetch([{"text": "", "finish_reason": "error", "error": "HTTP 500"}]), g)
    assert [a.reason for a in err] == [Reason.CAPTION_FAILED]                  # no seed retry for errors
    assert run_attempts([job], scripted_fetch([None]), g) == [None]            # cache-only miss
    assert run_attempts([job], scripted_fetch([{"text": REFUSAL, "finish_reason": "stop"}, None]), g) == [None]


def test_handler_checks_cache_right_before_each_request(tmp_path):
    """A Beam retry of a bundle re-runs run_inference: cached keys must not be requested again."""
    spec = EndpointConfig(backend=FAKE, model="fake-vlm")
    handler = CaptionModelHandler(spec, str(tmp_path / "cache"), GateConfig(), batch_size=4)
    model = handler.load_model()
    prompts = load_caption_prompts()
    jobs = [make_job(photo(w), prompts, cfg(), spec) for w in (100, 101, 102, 103)]
    jobs.append(jobs[0])                                     # the same image twice in one batch
    first = list(handler.run_inference(jobs, model))
    # 100: 1 request (shared by its twin); 101: refusal + retry; 102: loop + retry; 103: error
    assert len(FakeCaptionBackend.calls) == 6
    reasons = [[a.reason for a in pr.inference[1]] for pr in first]
    assert reasons == [[None], [Reason.GATE_REFUSAL, None], [Reason.GATE_REPETITION] * 2,
                       [Reason.CAPTION_FAILED], [None]]
    FakeCaptionBackend.calls = []
    again = list(handler.run_inference(jobs, model))
    assert [r.params["seed"] for r in FakeCaptionBackend.calls] == [0]     # only the backend error again
    assert [[a.reason for a in pr.inference[1]] for pr in again] == reasons
    assert all(a.cached for pr in again[:3] for a in pr.inference[1])


# ---- the PTransform -----------------------------------------------------------------------------------
def run_stage(samples, c, out, want_kept, want_rejects):
    with BeamTestPipeline() as p:
        kept, rejects = p | beam.Create(samples) | CaptionImages(c, str(out))
        prov = kept | "K" >> beam.Map(lambda s: (s.key, s.captions["en"].kind, s.provenance["caption"]["attempts"],
                                                  s.provenance["caption"]["cached"]))
        assert_that(prov,
                    equal_to(want_kept), label="kept")
        assert_that(rejects | "R" >> beam.Map(lambda r: (r.key, r.stage, str(r.reason))),
                    equal_to(want_rejects), label="rejects")


def test_caption_images_routes_every_sample(tmp_path):
    samples = [photo(w) for w in (100, 101, 102, 103)]
    k = [s.key for s in samples]
    rejected = [(k[2], "caption", "gate_repetition"), (k[3], "caption", "caption_failed")]
    run_stage(samples, cfg(), tmp_path, [(k[0], "dense", 1, False), (k[1], "dense", 2, False)], rejected)
    assert len(FakeCaptionBackend.calls) == 6
    # rerun: answered from the cache in Prepare, only the backend error is requested again
    FakeCaptionBackend.calls = []
    run_stage(samples, cfg(), tmp_path, [(k[0], "dense", 1, True), (k[1], "dense", 2, True)], rejected)
    assert [image_width(r.images[0]) for r in FakeCaptionBackend.calls] == [103]


def test_caption_provenance_on_kept_sample(tmp_path):
    s = photo(101)
    with BeamTestPipeline() as p:
        kept, _ = p | beam.Create([s]) | CaptionImages(cfg(quality="smoke"), str(tmp_path))
        assert_that(kept | beam.Map(lambda x: (x.captions["en"], x.provenance["caption"])), check_provenance)


def check_provenance(rows):
    [(cap, prov)] = rows
    prompts = load_caption_prompts()
    assert cap.kind == "dense" and cap.backend == FAKE and cap.model == "fake-vlm" and cap.quality == "smoke"
    assert cap.prompt_id == "caption-general" and cap.prompt_sha256 == prompts["general"].sha256
    assert cap.params == {"max_tokens": 512, "temperature": 0.2, "seed": 1} and cap.created
    assert prov["attempts"] == 2 and prov["gate_failures"] == ["gate_refusal"] and prov["route"] == "general"
    assert prov["cached"] is False and prov["prompt_sha256"] == cap.prompt_sha256 and prov["created"] == cap.created


def test_carry_source_captions_never_invents():
    s = photo(orig_caption="  a red square  ")
    carried = carry_source_captions(s)
    assert carried.captions["en"].text == "a red square" and carried.captions["en"].kind == "source"
    assert carried.captions["en"].backend == "source"
    assert carry_source_captions(photo()).captions == {}


def test_endpoint_status(monkeypatch, tmp_path):
    monkeypatch.delenv("POLYCAP_CAPTION_ENDPOINT", raising=False)
    usable, msg = caption_endpoint_status(CaptionConfig(enabled=True))
    assert not usable and msg.startswith("no caption endpoint configured/reachable")
    usable, msg = caption_endpoint_status(CaptionConfig(enabled=True, endpoint="http://127.0.0.1:9/v1"))
    assert not usable and "no caption endpoint configured/reachable" in msg and "127.0.0.1:9" in msg
    with FakeOpenAIServer() as server:
        monkeypatch.setenv("POLYCAP_CAPTION_ENDPOINT", server.url)
        assert caption_endpoint_status(CaptionConfig(enabled=True)) == (True, f"endpoint {server.url} serves fake-vlm")
        usable, msg = caption_endpoint_status(CaptionConfig(enabled=True, model="gpt-4o"))
        assert not usable and "does not serve 'gpt-4o'" in msg
    usable, msg = caption_endpoint_status(CaptionConfig(enabled=True, backend="local", model=str(tmp_path)))
    assert not usable and "caption.model" in msg


def test_rejects_are_rejects_and_samples_are_samples(tmp_path):
    samples = [photo(100), photo(103)]
    with BeamTestPipeline() as p:
        kept, rejects = p | beam.Create(samples) | CaptionImages(cfg(cache=False), str(tmp_path))
        assert_that(kept | "K" >> beam.Map(lambda s: isinstance(s, Sample)), equal_to([True]), label="k")
        assert_that(rejects | "R" >> beam.Map(lambda r: isinstance(r, Reject)), equal_to([True]), label="r")
    assert not (tmp_path / "_cache").exists()


def test_a_crashing_batch_becomes_internal_error_rejects(tmp_path):
    samples = [photo(104, color=(i, 0, 0)) for i in (10, 20)]
    with BeamTestPipeline() as p:
        kept, rejects = p | beam.Create(samples) | CaptionImages(cfg(batch_size=2), str(tmp_path))
        assert_that(kept, equal_to([]), label="none kept")
        assert_that(rejects | beam.Map(lambda r: (r.key, r.stage, str(r.reason), "device-side assert" in r.detail)),
                    equal_to([(s.key, "caption", "internal_error", True) for s in samples]), label="rejects")
