"""OpenAI-compatible chat backend (vllm serve, SGLang, LMDeploy, llama.cpp server, OpenAI): async, bounded, retried."""
from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import random
import threading
from collections.abc import Sequence
from typing import Any

from polycap.schemas.config import EndpointConfig
from polycap.sharding.image_format import mime_type
from polycap.transforms.backends.base import GenBackend, GenRequest, GenResult, map_image_parts
from polycap.transforms.backends.http1 import Http1Pool, HttpError, proxy_for
from polycap.transforms.retry import BACKOFF_BASE_S, BACKOFF_MAX_S, retry_after_s, retry_wait_s

log = logging.getLogger(__name__)

# Sampling params the chat-completions API takes by name; anything else (top_k, repetition_penalty,
# min_p ... which vLLM/SGLang accept) travels in `extra_body`.
_NAMED_PARAMS = ("max_tokens", "max_completion_tokens", "temperature", "top_p", "seed", "stop",
                 "presence_penalty", "frequency_penalty", "n", "logit_bias")
# 4xx statuses worth retrying (RFC 9110: 408 Request Timeout, 409 Conflict, 429 Too Many Requests).
_RETRY_4XX = (408, 409, 429)


# -- pure request building -------------------------------------------------------------------------
def image_mime(data: bytes) -> str:
    """MIME type from the file's magic bytes; ValueError when it is no image format we know."""
    mime = mime_type(data)
    if mime is None:
        raise ValueError(f"unrecognised image bytes (starts with {data[:8]!r})")
    return mime


class DataUrl(str):
    """A `data:<mime>;base64,...` URL built by `image_data_url`: nothing in it needs JSON escaping."""

    __slots__ = ()


def image_data_url(data: bytes) -> str:
    return DataUrl(f"data:{image_mime(data)};base64,{base64.b64encode(data).decode('ascii')}")


def to_openai_messages(messages: Sequence[dict[str, Any]], images: Sequence[bytes]) -> list[dict[str, Any]]:
    """Replace each {"type": "image"} part, in order, by a base64 `image_url` part; text parts pass through."""
    return map_image_parts(messages, images,
                           lambda data: {"type": "image_url", "image_url": {"url": image_data_url(data)}})


def to_openai_params(params: dict[str, Any]) -> dict[str, Any]:
    """Request params -> `chat.completions.create` kwargs; unknown ones go in `extra_body`."""
    kwargs = {k: v for k, v in params.items() if k in _NAMED_PARAMS and v is not None}
    extra = {k: v for k, v in params.items() if k not in _NAMED_PARAMS and v is not None}
    if extra:
        kwargs["extra_body"] = extra
    return kwargs


def chat_body(model: str, messages: list[dict[str, Any]], params: dict[str, Any]) -> bytes:
    """The JSON body `chat.completions.create(model=, messages=, **to_openai_params(params))` sends (its
    `extra_body` merged at the top level, as the SDK does), encoded once per request.

    Image data URLs (tens of KB of base64, which json.dumps scans character by character) are spliced in
    after encoding the rest: a `DataUrl` has no character JSON escapes, so the bytes are what json.dumps
    would write. A marker that is not exactly once in the encoded rest falls back to json.dumps."""
    kwargs = to_openai_params(params)
    extra = kwargs.pop("extra_body", {})
    urls: list[str] = []
    skeleton = [_mark_urls(m, urls) for m in messages]
    body = {"model": model, "messages": skeleton, **kwargs, **extra}
    text = json.dumps(body, ensure_ascii=False, separators=(",", ":"))
    if urls:
        pieces = [text]
        for i, url in enumerate(urls):
            head, *rest = pieces.pop().split(json.dumps(_marker(i)))
            if len(rest) != 1:   # the marker also occurs in a text (never by chance): encode it all
                body["messages"] = messages
                return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
            pieces += [head, '"', url, '"', rest[0]]
        text = "".join(pieces)
    return text.encode("utf-8")


def _marker(i: int) -> str:
    return f"\x00polycap-image-{i}\x00"


def _mark_urls(msg: dict[str, Any], urls: list[str]) -> dict[str, Any]:
    """`msg` with each image_url that is a DataUrl replaced by a marker; the URLs appended to `urls`."""
    content = msg.get("content")
    if not isinstance(content, list):
        return msg
    parts = []
    for part in content:
        url = (part.get("image_url") or {}).get("url") if part.get("type") == "image_url" else None
        if isinstance(url, DataUrl):
            part = {**part, "image_url": {**part["image_url"], "url": _marker(len(urls))}}
            urls.append(url)
        parts.append(part)
    return {**msg, "content": parts}


class HttpStatusError(Exception):
    """A non-2xx answer on the lean path; `message` is what the SDK's APIStatusError would carry."""

    def __init__(self, status: int, body: bytes, headers: dict[str, str]):
        message = f"Error code: {status}"
        try:
            data = json.loads(body)
        except ValueError:
            data = None
        error = data.get("error", data) if isinstance(data, dict) else None
        detail = error.get("message") if isinstance(error, dict) else None
        if isinstance(detail, str) and detail:
            message += f" - {detail}"
        super().__init__(message)
        self.status_code, self.message, self.headers = status, message, headers


def classify_error(exc: BaseException) -> tuple[bool, float | None, str]:
    """-> (retryable, server-requested wait in s, short description) for one failed call (either client)."""
    if isinstance(exc, asyncio.TimeoutError):   # before OSError: TimeoutError is one
        return True, None, "timeout"
    if isinstance(exc, HttpError):
        return True, None, f"connection error: {exc}"
    if isinstance(exc, HttpStatusError):
        return _status_verdict(exc.status_code, exc.message, exc.headers)
    if isinstance(exc, (ValueError, _MalformedResponse)):
        return True, None, f"malformed response: {exc}"  # json.JSONDecodeError is a ValueError
    import openai

    if isinstance(exc, openai.APITimeoutError):
        return True, None, "timeout"
    if isinstance(exc, openai.APIConnectionError):
        return True, None, f"connection error: {exc}"
    if isinstance(exc, openai.APIStatusError):
        return _status_verdict(exc.status_code, exc.message, exc.response.headers)
    if isinstance(exc, openai.APIResponseValidationError):
        return True, None, f"malformed response: {exc}"
    return False, None, f"{type(exc).__name__}: {exc}"


def _status_verdict(status: int, message: str, headers: Any) -> tuple[bool, float | None, str]:
    retry = status >= 500 or status in _RETRY_4XX
    wait = retry_after_s(headers) if status == 429 else None
    return retry, wait, f"HTTP {status}: {message}"


class _MalformedResponse(Exception):
    pass


def parse_completion(resp: Any, fallback_model: str) -> tuple[str, str, str]:
    """-> (text, finish_reason, model) from a ChatCompletion; _MalformedResponse if it has no choice."""
    choices = getattr(resp, "choices", None)
    if not choices:
        raise _MalformedResponse("no choices in the response")
    choice = choices[0]
    message = getattr(choice, "message", None)
    if message is None:
        raise _MalformedResponse("no message in the first choice")
    text = message.content or getattr(message, "refusal", None) or ""
    return text, choice.finish_reason or "stop", getattr(resp, "model", None) or fallback_model


def parse_completion_json(data: Any, fallback_model: str) -> tuple[str, str, str]:
    """parse_completion for the decoded JSON of a chat completion (the lean path)."""
    choices = data.get("choices") if isinstance(data, dict) else None
    if not choices or not isinstance(choices, list):
        raise _MalformedResponse("no choices in the response")
    choice = choices[0]
    message = choice.get("message") if isinstance(choice, dict) else None
    if not isinstance(message, dict):
        raise _MalformedResponse("no message in the first choice")
    text = message.get("content") or message.get("refusal") or ""
    if not isinstance(text, str):
        raise _MalformedResponse(f"message content is a {type(text).__name__}, not text")
    return text, choice.get("finish_reason") or "stop", data.get("model") or fallback_model


def served_models(endpoint: str, api_key_env: str = "", timeout_s: float = 5.0) -> list[str]:
    """GET <endpoint>/models (OpenAI protocol); raises OSError/ValueError when it does not answer."""
    import json
    import urllib.request

    req = urllib.request.Request(f"{endpoint.rstrip('/')}/models")
    key = os.environ.get(api_key_env, "") if api_key_env else ""
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    with urllib.request.urlopen(req, timeout=timeout_s) as resp:
        data = json.loads(resp.read().decode("utf-8"))
    return [str(m.get("id", "")) for m in data.get("data", [])]


# -- the backend -----------------------------------------------------------------------------------
class OpenAIBackend(GenBackend):
    """An HTTP client on one event loop per worker; our own retries (the SDK's are disabled).

    `spec.options`: `client` ("lean": transforms/backends/http1.py, keep-alive HTTP/1.1 on asyncio streams,
    default; "sdk": the `openai` package's AsyncOpenAI; lean falls back to the SDK when the environment sets
    a proxy for the endpoint), `loop` ("thread": a long-lived loop thread keeping the connection pool warm,
    default; "run": `asyncio.run` and a fresh client per batch), `backoff_base_s` (0.5), `backoff_max_s` (30),
    `seed` for the jitter RNG. Both clients send the same JSON body, the same `Authorization: Bearer` header,
    and give the same results, errors, retries and Retry-After waits.
    """

    name = "openai"

    @classmethod
    def check_available(cls, spec: EndpointConfig) -> None:
        """On the worker: the endpoint answers GET /models (3 tries) and serves `spec.model` if it lists any."""
        import time

        from polycap.transforms.backends.base import ModelUnavailableError

        if not spec.endpoint:
            raise ModelUnavailableError("backend 'openai' needs `endpoint` (e.g. http://127.0.0.1:8000/v1)")
        for attempt in range(3):
            try:
                models = served_models(spec.endpoint, spec.api_key_env, timeout_s=min(spec.timeout_s, 10.0))
                break
            except (OSError, ValueError) as e:
                if attempt == 2:
                    raise ModelUnavailableError(
                        f"endpoint {spec.endpoint} does not answer from this worker: GET /models failed "
                        f"({getattr(e, 'reason', None) or e}); start the server, or set the endpoint to an address "
                        "the workers can reach (not the launcher's localhost on a cluster)") from None
                time.sleep(1.0 + attempt)
        if spec.model and models and spec.model not in models:
            raise ModelUnavailableError(f"endpoint {spec.endpoint} does not serve {spec.model!r} (it serves "
                                        f"{', '.join(models)}): set the model to one it serves")

    def __init__(self, spec: EndpointConfig):
        super().__init__(spec)
        if not spec.endpoint:
            raise ValueError("backend 'openai' needs `endpoint` (e.g. http://127.0.0.1:8000/v1)")
        self._api_key = os.environ.get(spec.api_key_env, "") if spec.api_key_env else ""
        if spec.api_key_env and not self._api_key:
            log.warning("env var %s is not set; sending no API key (fine for local servers)", spec.api_key_env)
        self._api_key = self._api_key or "EMPTY"
        opts = spec.options
        self._mode = opts.get("loop", "thread")
        if self._mode not in ("thread", "run"):
            raise ValueError(f"options.loop must be 'thread' or 'run', got {self._mode!r}")
        self._kind = opts.get("client", "lean")
        if self._kind not in ("lean", "sdk"):
            raise ValueError(f"options.client must be 'lean' or 'sdk', got {self._kind!r}")
        if self._kind == "lean" and proxy_for(spec.endpoint):
            log.info("a proxy is set for %s in the environment: using the openai SDK client, which honours it",
                     spec.endpoint)
            self._kind = "sdk"
        self._base = float(opts.get("backoff_base_s", BACKOFF_BASE_S))
        self._cap = float(opts.get("backoff_max_s", BACKOFF_MAX_S))
        self._rng = random.Random(opts.get("seed"))
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._client: Any = None
        self._pool: Http1Pool | None = None
        self._sem: asyncio.Semaphore | None = None
        if self._mode == "thread":
            self._start_loop()

    def __repr__(self) -> str:  # never shows the key
        return f"OpenAIBackend(endpoint={self.spec.endpoint!r}, model={self.spec.model!r})"

    def _scrub(self, text: str) -> str:
        return text.replace(self._api_key, "***") if self._api_key != "EMPTY" else text

    # -- event loop plumbing ----------------------------------------------------------------------
    def _start_loop(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="openai-backend", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._open(), self._loop).result()

    async def _open(self) -> None:
        limit = max(1, int(self.spec.concurrency))
        if self._kind == "lean":
            self._pool = Http1Pool(self.spec.endpoint, {"Authorization": f"Bearer {self._api_key}",
                                                        "User-Agent": "polycap"}, max_idle=limit)
        else:
            from openai import AsyncOpenAI

            self._client = AsyncOpenAI(base_url=self.spec.endpoint, api_key=self._api_key, max_retries=0,
                                       timeout=self.spec.timeout_s)
        self._sem = asyncio.Semaphore(limit)

    async def _close_client(self) -> None:
        if self._client is not None:
            await self._client.close()
        if self._pool is not None:
            await self._pool.close()
        self._client, self._pool = None, None

    def generate(self, requests: Sequence[GenRequest]) -> list[GenResult]:
        if not requests:
            return []
        if self._mode == "run":
            return asyncio.run(self._batch_with_fresh_client(requests))
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(self._batch(requests), self._loop).result()

    async def _batch_with_fresh_client(self, requests: Sequence[GenRequest]) -> list[GenResult]:
        await self._open()
        try:
            return await self._batch(requests)
        finally:
            await self._close_client()

    async def _batch(self, requests: Sequence[GenRequest]) -> list[GenResult]:
        return list(await asyncio.gather(*(self._one(r) for r in requests)))

    def close(self) -> None:
        if self._loop is None or not self._loop.is_running():
            return
        asyncio.run_coroutine_threadsafe(self._close_client(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._loop.close()
        self._loop = None

    # -- one request with retries -----------------------------------------------------------------
    async def _one(self, req: GenRequest) -> GenResult:
        try:
            kwargs = to_openai_params(req.params)
            messages = to_openai_messages(req.messages, req.images)
            body = chat_body(self.spec.model, messages, req.params) if self._kind == "lean" else b""
        except (ValueError, TypeError) as exc:  # a bad request is not worth retrying
            return GenResult(req.key, "", "error", self.spec.model, f"bad request: {exc}", attempts=0)
        error = ""
        for attempt in range(1, self.spec.max_retries + 2):
            try:
                if body:
                    text, finish, model = await self._post(body)
                else:
                    text, finish, model = await self._call(messages, kwargs)
                return GenResult(req.key, text, finish, model, None, attempts=attempt)
            except Exception as exc:  # noqa: BLE001 - every failure becomes a result, never a raise
                retry, wait, error = classify_error(exc)
                error = self._scrub(error)
            if not retry or attempt > self.spec.max_retries:
                break
            # a Retry-After longer than the request timeout is cut to it: the backend's own limit, not a fixed one
            delay = retry_wait_s(attempt - 1, wait, self.spec.timeout_s, self._base, self._cap, self._rng)
            log.debug("request %s attempt %d failed (%s); retrying in %.2fs", req.key, attempt, error, delay)
            await asyncio.sleep(delay)
        return GenResult(req.key, "", "error", self.spec.model, error, attempts=attempt)

    async def _call(self, messages: list[dict[str, Any]], kwargs: dict[str, Any]) -> tuple[str, str, str]:
        assert self._sem is not None and self._client is not None
        async with self._sem:
            # wait_for bounds the whole call; the client's own timeout only bounds each socket read
            resp = await asyncio.wait_for(
                self._client.chat.completions.create(model=self.spec.model, messages=messages, **kwargs),
                timeout=self.spec.timeout_s)
        return parse_completion(resp, self.spec.model)

    async def _post(self, body: bytes) -> tuple[str, str, str]:
        """The lean path's one call: the same bounds as `_call` (semaphore, one timeout for the whole call)."""
        assert self._sem is not None and self._pool is not None
        async with self._sem:
            async with asyncio.timeout(self.spec.timeout_s):
                resp = await self._pool.post("/chat/completions", body)
        if not 200 <= resp.status < 300:
            raise HttpStatusError(resp.status, resp.body, resp.headers)
        return parse_completion_json(json.loads(resp.body), self.spec.model)
