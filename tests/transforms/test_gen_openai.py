"""OpenAIBackend against FakeOpenAIServer (a test double): faults, retries, timeouts, concurrency, keys."""
from __future__ import annotations

import base64
import json
import logging
import time

import pytest

from polycap.schemas.config import EndpointConfig
from polycap.transforms.backends.base import GenModelHandler, GenRequest
from polycap.transforms.backends.gen_openai import (
    OpenAIBackend,
    image_mime,
    to_openai_messages,
    to_openai_params,
)
from tests.conftest import jpeg_bytes
from tests.fakes.openai_server import REFUSAL, FakeOpenAIServer, default_caption

FAST = {"backoff_base_s": 0.005, "backoff_max_s": 0.05, "seed": 0}


def spec(server: FakeOpenAIServer, **kw) -> EndpointConfig:
    kw.setdefault("options", FAST)
    kw.setdefault("timeout_s", 2.0)
    return EndpointConfig("openai", model="fake-vlm", endpoint=server.url, **kw)


def req(i: int, image: bool = True, **params) -> GenRequest:
    parts = [{"type": "image"}] if image else []
    parts.append({"type": "text", "text": f"Describe image number {i} in detail."})
    return GenRequest(key=f"k{i}", messages=[{"role": "user", "content": parts}],
                      images=(jpeg_bytes(color=(i % 256, 40, 90)),) if image else (), params=params)


def run(server: FakeOpenAIServer, requests, **kw):
    backend = OpenAIBackend(spec(server, **kw))
    try:
        return backend.generate(requests)
    finally:
        backend.close()


# -- pure request building -------------------------------------------------------------------------
def test_image_mime_from_magic_bytes():
    import io

    from PIL import Image

    def enc(fmt: str) -> bytes:
        buf = io.BytesIO()
        Image.new("RGB", (4, 4)).save(buf, format=fmt)
        return buf.getvalue()

    assert image_mime(jpeg_bytes()) == "image/jpeg"
    assert image_mime(enc("PNG")) == "image/png"
    assert image_mime(enc("WEBP")) == "image/webp"
    assert image_mime(enc("GIF")) == "image/gif"
    with pytest.raises(ValueError):
        image_mime(b"hello world")


def test_messages_get_data_url_parts_in_order():
    a, b = jpeg_bytes(color=(1, 2, 3)), jpeg_bytes(color=(200, 2, 3))
    msgs = [{"role": "system", "content": "be precise"},
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "vs"}, {"type": "image"}]}]
    out = to_openai_messages(msgs, (a, b))
    assert out[0] == msgs[0]
    urls = [p["image_url"]["url"] for p in out[1]["content"] if p["type"] == "image_url"]
    assert [base64.b64decode(u.split(",", 1)[1]) for u in urls] == [a, b]
    assert urls[0].startswith("data:image/jpeg;base64,")
    assert out[1]["content"][1] == {"type": "text", "text": "vs"}
    assert msgs[1]["content"][0] == {"type": "image"}  # input untouched
    with pytest.raises(ValueError):
        to_openai_messages(msgs, (a,))
    with pytest.raises(ValueError):
        to_openai_messages(msgs[:1], (a,))


def test_params_named_and_extra_body():
    out = to_openai_params({"max_tokens": 9, "temperature": 0.0, "top_p": 0.9, "seed": 3, "top_k": 5,
                            "repetition_penalty": 1.1, "stop": None})
    assert out == {"max_tokens": 9, "temperature": 0.0, "top_p": 0.9, "seed": 3,
                   "extra_body": {"top_k": 5, "repetition_penalty": 1.1}}
    assert to_openai_params({}) == {}


# -- against the fake server ------------------------------------------------------------------------
@pytest.mark.parametrize("fault", ["500", "429", "timeout", "truncated", "malformed", "disconnect"])
def test_each_fault_kind_is_retried_and_recovered(fault):
    # Only the "timeout" fault needs a short client timeout; every other kind gets a generous one, so that
    # a loaded CI machine (2 cores, other jobs) cannot turn a healthy request into a client-side timeout.
    timeout_s = 1.0 if fault == "timeout" else 30.0
    with FakeOpenAIServer(fault_rate=0.5, faults=(fault,), seed=1, hang_s=60, retry_after=0.01) as srv:
        requests = [req(i) for i in range(8)]
        results = run(srv, requests, max_retries=8, timeout_s=timeout_s, concurrency=8)
        faulted = sum(e["fault"] == fault for e in srv.log)
    assert faulted >= 2, "the fault was never injected; the test would prove nothing"
    assert [r.key for r in results] == [r.key for r in requests]
    assert all(r.error is None and r.finish_reason == "stop" for r in results), results
    attempts = sum(r.attempts for r in results)
    if fault in ("timeout", "disconnect"):
        # A client timeout can fire before the server has read the request (CI saw 19 attempts for 11
        # requests read), and a dropped connection can break a pooled keep-alive socket before a request
        # reaches the server: the client may count attempts the server never saw, never the reverse.
        assert attempts >= srv.requests
    else:
        assert attempts == srv.requests
    assert any(r.attempts > 1 for r in results)
    for r, q in zip(results, srv_bodies_by_key(srv, results)):
        assert r.text == default_caption(q)  # each result carries its own request's answer


def srv_bodies_by_key(srv: FakeOpenAIServer, results):
    by_text = {}
    for body in srv.bodies:
        by_text[body["messages"][0]["content"][-1]["text"]] = body
    return [by_text[f"Describe image number {r.key[1:]} in detail."] for r in results]


def test_refusal_and_length_come_back_as_results_not_errors():
    with FakeOpenAIServer(fault_rate=1.0, faults=("refusal",)) as srv:
        (r,) = run(srv, [req(0)])
    assert (r.text, r.finish_reason, r.error, r.attempts) == (REFUSAL, "stop", None, 1)
    with FakeOpenAIServer() as srv:
        (r,) = run(srv, [req(1, max_tokens=10)])
    assert r.finish_reason == "length" and len(r.text.split()) == 10 and r.error is None


def test_exhausted_retries_are_reported_as_errors():
    with FakeOpenAIServer(fault_rate=1.0, faults=("500",)) as srv:
        results = run(srv, [req(0), req(1)], max_retries=2)
        assert srv.requests == 6
    for r in results:
        assert r.finish_reason == "error" and r.text == "" and r.attempts == 3
        assert "HTTP 500" in r.error


def test_4xx_is_not_retried_but_408_is():
    with FakeOpenAIServer(responder=lambda body: {"status": 400, "error": "bad image"}) as srv:
        (r,) = run(srv, [req(0)], max_retries=3)
        assert srv.requests == 1
    assert r.attempts == 1 and "HTTP 400" in r.error and "bad image" in r.error
    with FakeOpenAIServer(responder=lambda body: {"status": 408, "error": "slow"}) as srv:
        (r,) = run(srv, [req(0)], max_retries=2)
        assert srv.requests == 3 and r.attempts == 3


def test_429_honors_retry_after():
    with FakeOpenAIServer(fault_rate=1.0, faults=("429",), retry_after=0.3) as srv:
        t0 = time.perf_counter()
        (r,) = run(srv, [req(0)], max_retries=2)
        elapsed = time.perf_counter() - t0
    # our own backoff is <= 0.05 s here, so only Retry-After can explain >= 0.6 s for two waits
    assert r.attempts == 3 and "HTTP 429" in r.error
    assert 0.6 <= elapsed < 10.0  # upper bound only proves it does not hang


def test_retry_after_is_capped_by_the_backend_timeout():
    with FakeOpenAIServer(fault_rate=1.0, faults=("429",), retry_after=60) as srv:
        t0 = time.perf_counter()
        (r,) = run(srv, [req(0)], max_retries=1, timeout_s=0.3)
        elapsed = time.perf_counter() - t0
    assert r.attempts == 2 and "HTTP 429" in r.error
    assert 0.3 <= elapsed < 5.0  # waited the 0.3 s timeout, not the 60 s the server asked for


def test_timeouts_are_bounded():
    with FakeOpenAIServer(fault_rate=1.0, faults=("timeout",), hang_s=30) as srv:
        t0 = time.perf_counter()
        results = run(srv, [req(0), req(1)], max_retries=1, timeout_s=0.3)
        elapsed = time.perf_counter() - t0
    assert all(r.error == "timeout" and r.attempts == 2 for r in results)
    assert elapsed < 10.0  # the server hangs 30 s: only the client timeout ends it sooner


def test_concurrency_bound_is_respected_and_used():
    def slow(body):
        time.sleep(0.05)
        return "ok"

    with FakeOpenAIServer(responder=slow) as srv:
        results = run(srv, [req(i, image=False) for i in range(24)], concurrency=3)
        assert srv.max_in_flight == 3
    assert [r.text for r in results] == ["ok"] * 24


def test_no_duplicate_or_lost_results_under_faults():
    faults = ("500", "429", "timeout", "truncated", "malformed", "refusal")
    with FakeOpenAIServer(fault_rate=0.3, faults=faults, seed=7, hang_s=60, retry_after=0.01) as srv:
        requests = [req(i, image=False) for i in range(60)]
        results = run(srv, requests, max_retries=8, timeout_s=1.0, concurrency=16)
        kinds = {e["fault"] for e in srv.log}
    assert kinds >= set(faults)
    assert [r.key for r in results] == [q.key for q in requests]
    assert all(r.error is None for r in results)
    refusals = [r for r in results if r.text == REFUSAL]
    for r, body in zip(results, srv_bodies_by_key(srv, results)):
        assert r in refusals or r.text == default_caption(body)


def test_params_model_and_images_reach_the_server():
    with FakeOpenAIServer() as srv:
        (r,) = run(srv, [req(3, max_tokens=500, temperature=0.7, top_p=0.8, seed=11, top_k=20)])
        body = srv.bodies[0]
    assert (body["max_tokens"], body["temperature"], body["top_p"], body["seed"], body["top_k"]) == \
        (500, 0.7, 0.8, 11, 20)
    assert body["model"] == "fake-vlm" and r.model == "fake-vlm"
    url = body["messages"][0]["content"][0]["image_url"]["url"]
    assert base64.b64decode(url.split(",", 1)[1]) == req(3).images[0]


def test_api_key_comes_from_env_and_never_leaks(monkeypatch, caplog):
    secret = "sk-test-polycap-0123456789abcdef"
    monkeypatch.setenv("POLYCAP_TEST_KEY", secret)
    caplog.set_level(logging.DEBUG)
    with FakeOpenAIServer(api_key=secret) as srv:
        (ok,) = run(srv, [req(0)], api_key_env="POLYCAP_TEST_KEY")
    assert ok.error is None
    with FakeOpenAIServer(api_key="another-key", fault_rate=0.5, faults=("500",), seed=3) as srv:
        backend = OpenAIBackend(spec(srv, api_key_env="POLYCAP_TEST_KEY", max_retries=1))
        results = backend.generate([req(i) for i in range(4)])
        text = repr(backend) + str(vars(backend.spec))
        backend.close()
    assert all("HTTP 401" in r.error and "***" in r.error for r in results)
    assert all(r.attempts == 1 for r in results)  # 401 is not retried
    assert secret not in caplog.text + text + "".join(r.error for r in results)


def test_missing_key_env_sends_empty_and_missing_endpoint_fails():
    with FakeOpenAIServer() as srv:
        (r,) = run(srv, [req(0)], api_key_env="POLYCAP_SURELY_UNSET_KEY")
    assert r.error is None
    with pytest.raises(ValueError, match="endpoint"):
        OpenAIBackend(EndpointConfig("openai", model="m"))


def test_bad_request_is_an_error_result_without_a_call():
    bad = GenRequest("bad", [{"role": "user", "content": [{"type": "image"}]}], images=(b"not an image",))
    with FakeOpenAIServer() as srv:
        results = run(srv, [bad, req(1)])
        assert srv.requests == 1
    assert results[0].finish_reason == "error" and "unrecognised image" in results[0].error
    assert results[1].error is None


def test_asyncio_run_mode_gives_the_same_answers():
    requests = [req(i) for i in range(5)]
    with FakeOpenAIServer() as srv:
        a = run(srv, requests)
        b = run(srv, requests, options={**FAST, "loop": "run"})
    assert [r.text for r in a] == [r.text for r in b] and all(r.error is None for r in b)


def test_runs_inside_beam_run_inference():
    import apache_beam as beam
    from apache_beam.ml.inference.base import RunInference
    from apache_beam.testing.test_pipeline import TestPipeline
    from apache_beam.testing.util import assert_that, equal_to

    with FakeOpenAIServer(fault_rate=0.3, seed=2, hang_s=60, retry_after=0.01) as srv:
        handler = GenModelHandler(spec(srv, max_retries=8, timeout_s=1.0), max_batch_size=4)
        with TestPipeline() as p:
            out = (p | beam.Create([req(i, image=False) for i in range(10)])
                   | RunInference(handler)
                   | beam.Map(lambda pr: (pr.example.key, pr.inference.key, pr.inference.error is None)))
            assert_that(out, equal_to([(f"k{i}", f"k{i}", True) for i in range(10)]))


# -- the lean client (default) and the openai SDK client give the same requests, results and errors ---------
def _by_text(bodies):
    return sorted(bodies, key=lambda b: json.dumps(b["messages"]))


def test_lean_and_sdk_clients_send_the_same_bodies_and_get_the_same_results():
    requests = [req(i, max_tokens=40 + i, temperature=0.5, seed=i, top_k=7) for i in range(6)]
    requests.append(GenRequest("sys", [{"role": "system", "content": "Réponds en français, « court »."},
                                       {"role": "user", "content": "한국어 \"quoted\" \\ text\n"}],
                               params={"max_tokens": 3, "stop": ["\n"]}))
    got = {}
    for kind in ("lean", "sdk"):
        with FakeOpenAIServer() as srv:
            results = run(srv, requests, options={**FAST, "client": kind})
            got[kind] = (results, _by_text(srv.bodies))
    assert got["lean"][0] == got["sdk"][0] and all(r.error is None for r in got["lean"][0])
    assert got["lean"][1] == got["sdk"][1]     # the same JSON body, extra_body (top_k) merged at the top level
    assert got["lean"][0][-1].finish_reason == "length"


def test_lean_and_sdk_report_http_errors_alike():
    def bad(body):
        return {"status": 400, "error": "image too large"}

    errors = {}
    for kind in ("lean", "sdk"):
        with FakeOpenAIServer(responder=bad) as srv:
            (r,) = run(srv, [req(0)], max_retries=2, options={**FAST, "client": kind})
        with FakeOpenAIServer(fault_rate=1.0, faults=("500",)) as srv:
            (r5,) = run(srv, [req(0)], max_retries=1, options={**FAST, "client": kind})
        errors[kind] = (r.error, r.attempts, r5.error, r5.attempts)
    assert errors["lean"] == errors["sdk"] == \
        ("HTTP 400: Error code: 400 - image too large", 1, "HTTP 500: Error code: 500 - injected internal error", 2)


def test_sdk_client_still_retries_every_fault_kind():
    faults = ("500", "429", "timeout", "truncated", "malformed", "refusal")
    with FakeOpenAIServer(fault_rate=0.4, faults=faults, seed=5, hang_s=60, retry_after=0.01) as srv:
        requests = [req(i, image=False) for i in range(30)]
        results = run(srv, requests, max_retries=8, timeout_s=1.0, concurrency=8, options={**FAST, "client": "sdk"})
        kinds = {e["fault"] for e in srv.log}
    assert kinds >= set(faults) - {"timeout"} and all(r.error is None for r in results)
    assert [r.key for r in results] == [q.key for q in requests]


def test_lean_client_keeps_connections_alive_and_bounded():
    with FakeOpenAIServer() as srv:
        backend = OpenAIBackend(spec(srv, concurrency=4))
        try:
            for start in range(0, 40, 10):
                assert all(r.error is None for r in backend.generate([req(i) for i in range(start, start + 10)]))
            assert backend._kind == "lean" and backend._pool is not None and backend._pool.opened <= 4
        finally:
            backend.close()
        assert srv.requests == 40


def test_a_proxy_in_the_environment_selects_the_sdk_client(monkeypatch):
    for name in ("http_proxy", "all_proxy", "no_proxy", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.invalid:3128")
    cfg = EndpointConfig("openai", model="m", endpoint="http://10.9.8.7:8000/v1", options={"loop": "run"})
    assert OpenAIBackend(cfg)._kind == "sdk"
    monkeypatch.setenv("NO_PROXY", "10.9.8.7")
    assert OpenAIBackend(cfg)._kind == "lean"
    with pytest.raises(ValueError, match="options.client"):
        OpenAIBackend(EndpointConfig("openai", model="m", endpoint="http://h/v1", options={"client": "curl"}))
