"""Caption stage end to end: 200 images against a faulty OpenAI-protocol fake; reruns make no requests; an edited
prompt re-captions everything; the local backend captions with a tiny InternVL checkpoint on CPU."""
from __future__ import annotations

import dataclasses
import json
import shutil
from collections import Counter
from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from polycap.schemas import Reason
from polycap.schemas.config import CaptionConfig
from polycap.transforms.backends.gen_openai import to_openai_messages
from polycap.transforms.caption import CaptionImages, backend_spec, load_caption_prompts, make_job
from tests.conftest import jpeg_bytes, make_sample
from tests.fakes.openai_server import FakeOpenAIServer, request_key

CAPTION_REASONS = {Reason.CAPTION_FAILED, Reason.GATE_TOO_SHORT, Reason.GATE_TOO_LONG, Reason.GATE_REFUSAL,
                   Reason.GATE_REPETITION, Reason.GATE_WRONG_LANGUAGE, Reason.GATE_UNGROUNDED_TEXT,
                   Reason.GATE_TRUNCATED, Reason.INTERNAL_ERROR}


class _Dump(beam.DoFn):
    """Writes what reached it to a JSON file (works in any runner mode; the test reads it back)."""

    def __init__(self, path: str):
        self.path = path

    def process(self, rows):
        Path(self.path).write_text(json.dumps(sorted(rows)))


def run_caption(samples, cfg: CaptionConfig, out: Path, args: list[str] | None = None) -> dict[str, list]:
    dump = out / "result.json"
    with beam.Pipeline(options=PipelineOptions(args or [])) as p:
        kept, rejects = p | beam.Create(samples, reshuffle=False) | CaptionImages(cfg, str(out))
        rows = ((kept | "K" >> beam.Map(lambda s: ["kept", s.key, s.provenance["caption"],
                                                    dataclasses.asdict(s.captions["en"])]),
                 rejects | "R" >> beam.Map(lambda r: ["rejected", r.key, r.stage, str(r.reason), r.detail]))
                | beam.Flatten() | beam.combiners.ToList() | beam.ParDo(_Dump(str(dump))))
    rows = json.loads(dump.read_text())
    return {"kept": [r for r in rows if r[0] == "kept"], "rejected": [r for r in rows if r[0] == "rejected"]}


def image_requests(samples, cfg: CaptionConfig) -> dict[str, str]:
    """Fake-server request key -> sample key: what our OpenAI client sends for each image."""
    prompts, spec = load_caption_prompts(cfg.prompts), backend_spec(cfg)
    out = {}
    for s in samples:
        req = make_job(s, prompts, cfg, spec).request(0)
        out[request_key({"messages": to_openai_messages(req.messages, req.images)})] = s.key
    return out


@pytest.mark.slow
def test_200_images_against_faulty_server_rerun_and_prompt_edit(tmp_path):
    samples = [make_sample(jpeg_bytes(48, 32, (i, 255 - i, (7 * i) % 256)), uri=f"mem://{i}") for i in range(200)]
    keys = {s.key for s in samples}
    assert len(keys) == 200
    # Injected hangs outlast the client timeout; 5 s is long enough that a loaded CI machine never times out a
    # healthy reply (a retry after a served reply would caption an image twice).
    with FakeOpenAIServer(fault_rate=0.3, hang_s=60.0, seed=0) as server:
        cfg = CaptionConfig(enabled=True, backend="openai", endpoint=server.url, model="fake-vlm", concurrency=64,
                            batch_size=100, timeout_s=5.0, max_retries=6, api_key_env="")
        by_request = image_requests(samples, cfg)

        # 1. every image captioned or rejected with a reason, exactly once
        first = run_caption(samples, cfg, tmp_path)
        kept, rejected = {r[1] for r in first["kept"]}, {r[1] for r in first["rejected"]}
        assert len(first["kept"]) + len(first["rejected"]) == 200
        assert kept | rejected == keys and not kept & rejected
        assert all(r[2] == "caption" and Reason(r[3]) in CAPTION_REASONS and r[4] for r in first["rejected"])
        assert len(kept) >= 180, Counter(r[3] for r in first["rejected"])
        faults = Counter(e["fault"] for e in server.log)
        assert faults[None] >= len(kept) and all(faults[f] > 0 for f in ("500", "429", "timeout", "truncated",
                                                                     "malformed", "refusal"))
        # no image captioned twice: at most one clean caption was generated per image
        clean = Counter(by_request[e["key"]] for e in server.log if e["status"] == 200 and e["fault"] is None)
        assert max(clean.values()) == 1 and set(clean) >= kept
        assert all(r[2]["cached"] is False for r in first["kept"])

        # 2. rerun: answered from the cache; only images whose backend calls all failed are asked again
        before = len(server.log)
        second = run_caption(samples, cfg, tmp_path)
        asked = {by_request[e["key"]] for e in server.log[before:]}
        failed = {r[1] for r in first["rejected"] if r[3] == Reason.CAPTION_FAILED}
        assert asked <= failed and (len(server.log) == before) == (not failed)
        assert {r[1] for r in second["kept"]} >= kept and all(r[2]["cached"] for r in second["kept"] if r[1] in kept)
        assert len(second["kept"]) + len(second["rejected"]) == 200

        # 3. an edited prompt file re-captions every image (here with two workers in separate processes)
        prompts = tmp_path / "prompts"
        shutil.copytree(Path(load_caption_prompts()["general"].path).parent, prompts)
        general = prompts / "general.yaml"
        general.write_text(general.read_text().replace("version: 1", "version: 2", 1).replace(
            "Do not mention these instructions", "Never mention these instructions"))
        server.fault_rate = 0.0
        edited = CaptionConfig(**{**cfg.__dict__, "prompts": str(prompts)})
        before = len(server.log)
        third = run_caption(samples, edited, tmp_path,
                            ["--direct_running_mode=multi_processing", "--direct_num_workers=2"])
        assert len(server.log) - before == 200
        assert not {e["key"] for e in server.log[before:]} & set(by_request)     # the new prompt text was sent
        assert set(image_requests(samples, edited).values()) == keys
        assert len(third["kept"]) == 200 and not any(r[2]["cached"] for r in third["kept"])
        assert {r[3]["prompt_sha256"] for r in third["kept"]} == {load_caption_prompts(str(prompts))["general"].sha256}


@pytest.fixture(scope="module")
def tiny_internvl(tmp_path_factory) -> str:
    pytest.importorskip("torch")          # the `local` extra; our own module is imported plainly so
    pytest.importorskip("transformers")   # an ImportError inside it fails instead of skipping
    from polycap.trainer.tiny import build_tiny_internvl

    return build_tiny_internvl(str(tmp_path_factory.mktemp("tiny-internvl")), seed=0)


@pytest.mark.slow
def test_polycap_run_with_local_backend_on_tiny_internvl(tmp_path, tiny_internvl, eval_dir):
    """`polycap run` with `caption.backend: local` on CPU, no network. Smoke quality: random-init weights emit
    gibberish, so the language/loop gates are skipped and the captions are labelled `smoke`; what is tested is
    the real path (processor, chat template, generate) and the provenance on every kept sample."""
    from polycap.pipelines.run import run
    from polycap.schemas.config import load_config
    from polycap.sharding.reader import iter_samples

    src = tmp_path / "in"
    src.mkdir()
    for rel in ("llava_examples/extreme_ironing.jpg", "llava_examples/waterview.jpg", "matplotlib/grace_hopper.jpg"):
        shutil.copy(eval_dir / "photos" / rel, src)
    caption = {"enabled": True, "backend": "local", "model": tiny_internvl, "device": "cpu", "max_tokens": 24,
               "batch_size": 2, "min_chars": 1, "skip_gates": ["language", "repetition", "truncated"]}
    cfg = load_config(data={"sources": [{"kind": "dir", "path": str(src), "name": "photos"}],
                             "output": str(tmp_path / "out"), "caption": caption})
    stats = run(cfg)
    assert stats["balanced"] and stats["inputs"] == 3 and stats["kept"] >= 1, stats
    assert any("caption: local" in n for n in stats["notes"])
    kept = list(iter_samples(str(tmp_path / "out")))
    assert len(kept) == stats["kept"]
    for s in kept:
        cap, prov = s.json["captions"]["en"], s.json["provenance"]["caption"]
        assert cap["text"].strip() and s.texts["en"] == cap["text"]
        assert cap["kind"] == "dense" and cap["quality"] == "smoke" and cap["backend"] == "local"
        assert cap["model"] == tiny_internvl and cap["created"] and cap["prompt_id"] == "caption-general"
        assert cap["prompt_sha256"] == load_caption_prompts()["general"].sha256
        assert cap["params"] == {"max_tokens": 24, "temperature": 0.2, "seed": prov["attempts"] - 1}
        assert {"backend", "model", "prompt_id", "prompt_sha256", "params", "created", "attempts", "cached",
                "route"} <= set(prov) and prov["quality"] == "smoke" and prov["cached"] is False
