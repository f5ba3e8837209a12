"""VllmBackend: request building tested without vLLM; batching logic with a fake LLM; a real run on GPU."""
from __future__ import annotations

import importlib.util
import os
from types import SimpleNamespace

import pytest

from polycap.schemas.config import EndpointConfig
from polycap.transforms.backends.base import GenRequest
from polycap.transforms.backends.gen_vllm import (
    VllmBackend,
    llm_kwargs,
    result_from_output,
    sampling_kwargs,
    to_vllm_messages,
)
from tests.conftest import jpeg_bytes


def caption_request(key: str, color=(10, 200, 30), **params) -> GenRequest:
    return GenRequest(key, [{"role": "system", "content": "You write dense captions."},
                            {"role": "user", "content": [{"type": "image"},
                                                         {"type": "text", "text": "Describe the image."}]}],
                      images=(jpeg_bytes(64, 48, color),), params=params)


# -- pure functions ---------------------------------------------------------------------------------
def test_messages_become_pil_parts_in_order():
    a, b = jpeg_bytes(32, 16, (255, 0, 0)), jpeg_bytes(16, 32, (0, 0, 255))
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "and"}, {"type": "image"}]}]
    out = to_vllm_messages(msgs, (a, b))
    parts = out[0]["content"]
    assert [p["type"] for p in parts] == ["image_pil", "text", "image_pil"]
    assert parts[0]["image_pil"].size == (32, 16) and parts[2]["image_pil"].size == (16, 32)
    assert parts[0]["image_pil"].mode == "RGB" and parts[0]["image_pil"].getpixel((16, 8))[0] > 200
    assert parts[1] == {"type": "text", "text": "and"}
    assert msgs[0]["content"][0] == {"type": "image"}
    with pytest.raises(ValueError):
        to_vllm_messages(msgs, (a,))
    with pytest.raises(ValueError):
        to_vllm_messages([{"role": "user", "content": "plain"}], (a,))


def test_messages_as_data_urls_for_older_vllm():
    (msg,) = to_vllm_messages(caption_request("k").messages[1:], caption_request("k").images, "data_url")
    assert msg["content"][0]["image_url"]["url"].startswith("data:image/jpeg;base64,")


def test_sampling_kwargs():
    assert sampling_kwargs({}) == {"temperature": 0.0, "max_tokens": 256}
    assert sampling_kwargs({"max_tokens": 900, "temperature": 0, "top_p": 0.9, "seed": 4}) == \
        {"max_tokens": 900, "temperature": 0.0, "seed": 4}
    assert sampling_kwargs({"temperature": 0.7, "top_p": 0.9, "seed": 4, "repetition_penalty": 1.05}) == \
        {"temperature": 0.7, "top_p": 0.9, "seed": 4, "repetition_penalty": 1.05, "max_tokens": 256}
    with pytest.raises(ValueError, match="temprature"):
        sampling_kwargs({"temprature": 0.5})


def test_llm_kwargs_pass_engine_options_only():
    spec = EndpointConfig("vllm", model="/ckpt/internvl", options={
        "max_model_len": 4096, "limit_mm_per_prompt": {"image": 1}, "quality": "smoke", "image_part": "pil"})
    assert llm_kwargs(spec) == {"model": "/ckpt/internvl", "max_model_len": 4096,
                                "limit_mm_per_prompt": {"image": 1}}


def test_result_from_output_maps_finish_reasons():
    def out(text, finish):
        return SimpleNamespace(outputs=[SimpleNamespace(text=text, finish_reason=finish)])

    assert result_from_output("a", out("A cat.", "stop"), "m").finish_reason == "stop"
    r = result_from_output("a", out("A cat sat on", "length"), "m")
    assert (r.text, r.finish_reason, r.error) == ("A cat sat on", "length", None)
    assert result_from_output("a", out("", "abort"), "m").finish_reason == "error"
    assert result_from_output("a", SimpleNamespace(outputs=[]), "m").error


# -- generate() with a fake LLM (a test double, not vLLM) -------------------------------------------
class FakeVllmLLM:
    """Records `chat` calls; answers with the prompt's last text and the image size, or fails on demand."""

    def __init__(self, fail_on: str | None = None):
        self.calls: list[int] = []
        self.fail_on = fail_on

    def chat(self, conversations, sampling_params, use_tqdm=True):
        self.calls.append(len(conversations))
        outs = []
        for conv, params in zip(conversations, sampling_params):
            text = conv[-1]["content"][-1]["text"]
            if self.fail_on and self.fail_on in text:
                raise ValueError("prompt too long")
            size = conv[-1]["content"][0]["image_pil"].size
            finish = "length" if params["max_tokens"] < 5 else "stop"
            outs.append(SimpleNamespace(outputs=[SimpleNamespace(text=f"{text} {size} {params.get('seed')}",
                                                                 finish_reason=finish)]))
        return outs


def fake_backend(llm: FakeVllmLLM) -> VllmBackend:
    return VllmBackend(EndpointConfig("vllm", model="tiny-internvl", options={"quality": "smoke"}),
                       llm=llm, sampling_params_cls=dict)


def test_generate_batches_in_one_call_with_per_request_params():
    llm = FakeVllmLLM()
    backend = fake_backend(llm)
    results = backend.generate([caption_request("a", seed=1), caption_request("b", seed=2, max_tokens=3)])
    assert llm.calls == [2]
    assert [r.key for r in results] == ["a", "b"]
    assert results[0].text == "Describe the image. (64, 48) 1" and results[0].finish_reason == "stop"
    assert results[1].finish_reason == "length" and results[1].text.endswith(" 2")
    assert backend.quality == "smoke" and results[0].model == "tiny-internvl"


def test_bad_requests_are_errors_and_a_failing_batch_is_split():
    llm = FakeVllmLLM(fail_on="BOOM")
    boom = GenRequest("boom", [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "BOOM"}]}],
                      images=(jpeg_bytes(),))
    no_img = GenRequest("noimg", [{"role": "user", "content": [{"type": "image"}]}])
    typo = caption_request("typo", temprature=1.0)
    results = fake_backend(llm).generate([caption_request("a"), boom, no_img, typo, caption_request("b")])
    assert [r.key for r in results] == ["a", "boom", "noimg", "typo", "b"]
    assert [r.error is None for r in results] == [True, False, False, False, True]
    assert "prompt too long" in results[1].error and "image parts" in results[2].error
    assert "temprature" in results[3].error
    assert llm.calls == [3, 1, 1, 1]  # the batch failed once, then each valid request ran alone


def test_missing_vllm_says_how_to_install():
    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed here")
    with pytest.raises(ImportError, match="polycap\\[vllm\\]"):
        VllmBackend(EndpointConfig("vllm", model="x"))


# -- a real vLLM run ---------------------------------------------------------------------------------
def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


@pytest.mark.gpu
@pytest.mark.skipif(importlib.util.find_spec("vllm") is None or not _cuda(), reason="needs vLLM and a CUDA GPU")
def test_real_vllm_captions_an_image(tmp_path):
    """Real small VLM: $POLYCAP_VLLM_TEST_MODEL (e.g. a local Qwen2-VL-2B dir), else the tiny InternVL."""
    model = os.environ.get("POLYCAP_VLLM_TEST_MODEL")
    if not model:
        from polycap.trainer.tiny import build_tiny_internvl

        model = build_tiny_internvl(str(tmp_path / "tiny"))
    backend = VllmBackend(EndpointConfig("vllm", model=model, options={
        "max_model_len": 4096, "gpu_memory_utilization": 0.3, "limit_mm_per_prompt": {"image": 1},
        "enforce_eager": True}))
    results = backend.generate([caption_request("a", max_tokens=32), caption_request("b", max_tokens=32, seed=1)])
    assert [r.key for r in results] == ["a", "b"]
    assert all(r.error is None and r.finish_reason in ("stop", "length") for r in results), results
