"""FakeOpenAIServer: a test double speaking the OpenAI chat-completions protocol, with fault injection.

A real HTTP server on 127.0.0.1 (random free port) in a background thread. It answers
`POST /v1/chat/completions` with the OpenAI response shape and `GET /v1/models`, and injects faults on a
deterministic fraction of requests, chosen from (seed, request counter):

    "500"        HTTP 500 with a JSON error body
    "429"        HTTP 429 with `Retry-After` (seconds) and `retry-after-ms`
    "timeout"    waits `hang_s` before answering normally (the client should time out first)
    "truncated"  HTTP 200 whose JSON body is cut in half
    "malformed"  HTTP 200 whose body is not JSON at all
    "refusal"    a normal completion whose text is an apology / refusal
    "length"     (opt-in) the text cut in half with `finish_reason="length"`
    "disconnect" (opt-in) the connection is closed without any response

Without a fault, the text comes from `responder(request_json)`: a str, a dict with "content" and an
optional "finish_reason", or {"status": 4xx/5xx, "error": msg} to answer with that HTTP error. The
default responder writes a deterministic ~800-character English caption derived from a hash of the
request's text and image parts. Like a real server, a reply longer than the
request's `max_tokens` (counted as whitespace-separated words) is cut and reported with
`finish_reason="length"`. With `api_key` set, requests without `Authorization: Bearer <api_key>` get a
401 whose message echoes the key they sent (as OpenAI's does), so clients can be tested for key hygiene.
"""
from __future__ import annotations

import hashlib
import json
import random
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

FAULT_KINDS = ("500", "429", "timeout", "truncated", "malformed", "refusal", "length", "disconnect")
REFUSAL = "I'm sorry, but I can't help with that."

# Sentence pools for the default caption: one pick per pool (by hash bytes), so the text is varied,
# English, free of quotes and repeated n-grams, and ~700-1000 characters long (ShareGPT4V target).
_POOLS = (
    ("The photograph shows a quiet city street on an overcast morning, seen from the edge of the sidewalk.",
     "The image captures a small wooden kitchen lit by soft daylight coming through a single window.",
     "This picture presents a rocky shoreline where low waves break against dark, weathered stones.",
     "The scene depicts a crowded farmers market laid out beneath striped canvas awnings.",
     "The photo shows a narrow mountain trail winding between pine trees toward a distant ridge."),
    ("In the foreground, two bicycles lean against a green metal railing, their tires dusted with mud.",
     "Near the bottom edge, three ceramic bowls sit on a table, each holding a different kind of fruit.",
     "At the center stands a red mailbox with peeling paint, beside a bench made of grey planks.",
     "On the left, a tall lamppost rises above a row of parked cars of assorted colors.",
     "In the middle ground, four people walk in the same direction, carrying bags and umbrellas."),
    ("Behind them, a brick building with arched windows fills most of the upper half of the frame.",
     "Further back, rolling hills covered in short grass fade into a pale, hazy sky.",
     "To the right, a wooden fence runs diagonally toward the horizon, partly hidden by tall weeds.",
     "The background holds a cluster of apartment blocks whose balconies are crowded with potted plants.",
     "Above everything, a few thin clouds stretch across an otherwise clear blue sky."),
    ("Counting carefully, there are two windows on the left wall and five on the right, all of them closed.",
     "Roughly a dozen birds perch along a wire that crosses the frame just below the top edge.",
     "Three potted plants line the steps, the largest one placed closest to the camera.",
     "Six chairs surround a round table, one of them pulled back as if someone has just stood up.",
     "A pair of dogs rests in the shade, one curled up and the other watching the passers-by."),
    ("Textures are rendered clearly: rough bark, smooth glass and worn fabric can all be told apart.",
     "Colors are muted overall, dominated by greys and browns, with a few saturated accents of orange.",
     "Light falls from the upper left, casting long soft shadows that suggest late afternoon.",
     "Small details, such as scattered leaves and a puddle reflecting the buildings, add depth.",
     "The materials look well used, with scratches and faded patches telling of daily wear."),
    ("The air seems still, and the even exposure keeps every corner of the picture readable.",
     "A gentle breeze appears to move the leaves, slightly blurring the edges of the nearest branches.",
     "The lighting is diffuse, so colors stay natural and no part of the scene is washed out.",
     "Moisture on the surfaces hints that it rained shortly before the picture was taken.",
     "The camera sits at eye level, which makes the viewer feel like a passer-by in the scene."),
    ("No legible text is visible anywhere in the image, apart from a small illegible sign in the distance.",
     "A shop sign is present on the far wall, but its lettering is too small to read with confidence.",
     "There is no writing in view; the surfaces are plain and free of labels or logos.",
     "A few painted markings appear on the ground, though they carry no readable words.",
     "Any printed words in the frame are blurred beyond recognition by the shallow depth of field."),
    ("Nothing identifies a specific landmark, so the location is best described as an ordinary place.",
     "The architecture resembles that of many older European towns, without pointing to a particular one.",
     "The vegetation is typical of a temperate climate, hinting at spring or early autumn.",
     "The arrangement suggests an everyday moment rather than a staged or commercial photograph.",
     "Clothing and vehicles look contemporary, placing the picture within the last decade or so."),
    ("Aesthetically, the composition is balanced, with the main subject placed near a third of the frame.",
     "From an aesthetic point of view, the calm palette and gentle light give the image a peaceful mood.",
     "The framing is simple but effective, and the moderate contrast keeps both shadows and highlights.",
     "Overall, the photo feels candid and warm, rewarding a closer look at its many small elements.",
     "The image is sharp where it matters, and its restrained colors lend it an understated elegance."),
)


def request_key(body: dict[str, Any]) -> str:
    """sha256 of the request's content (its messages, canonical JSON)."""
    blob = json.dumps(body.get("messages", []), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def default_caption(body: dict[str, Any]) -> str:
    """A deterministic ~800-char English caption derived from a hash of the text and image parts."""
    h = hashlib.sha256()
    for msg in body.get("messages", []):
        content = msg.get("content")
        parts = content if isinstance(content, list) else [{"type": "text", "text": content or ""}]
        for part in parts:
            if part.get("type") == "text":
                h.update(str(part.get("text", "")).encode("utf-8"))
            elif part.get("type") == "image_url":
                url = part.get("image_url")
                h.update(str(url.get("url") if isinstance(url, dict) else url).encode("utf-8"))
    digest = h.digest()
    return " ".join(pool[digest[i] % len(pool)] for i, pool in enumerate(_POOLS))


def _pick_fault(seed: int, counter: int, rate: float, faults: tuple[str, ...]) -> str | None:
    if rate <= 0 or not faults:
        return None
    rng = random.Random(f"{seed}:{counter}")
    return rng.choice(faults) if rng.random() < rate else None


def _cut_to_max_tokens(text: str, max_tokens: Any) -> tuple[str, bool]:
    words = text.split(" ")
    if isinstance(max_tokens, int) and 0 < max_tokens < len(words):
        return " ".join(words[:max_tokens]), True
    return text, False


class _ScriptedError(Exception):
    """A responder asked for an HTTP error: it returned {"status": 4xx/5xx, "error": message}."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as a real inference server
    disable_nagle_algorithm = True  # else headers and body in two writes meet delayed ACKs: +40 ms a reply
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, payload: bytes, headers: dict[str, str] | None = None) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError, OSError):
            self.close_connection = True  # the client gave up (e.g. after its own timeout)

    def do_GET(self) -> None:
        fake = self.server.fake
        if self.path.rstrip("/") == "/v1/models":
            data = {"object": "list", "data": [{"id": fake.model, "object": "model", "owned_by": "fake"}]}
            self._send(200, json.dumps(data).encode())
        else:
            self._send(404, b'{"error": {"message": "not found"}}')

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if self.path.rstrip("/") != "/v1/chat/completions":
            self._send(404, b'{"error": {"message": "not found"}}')
            return
        fake = self.server.fake
        try:
            body = json.loads(raw)
        except ValueError:
            fake._record(None, "", 400)
            self._send(400, b'{"error": {"message": "request body is not JSON"}}')
            return
        fake._enter()
        try:
            self._complete(fake, body)
        finally:
            fake._leave()

    def _complete(self, fake: FakeOpenAIServer, body: dict[str, Any]) -> None:
        fault, entry = fake._admit(body)
        if fake.api_key is not None and self.headers.get("Authorization") != f"Bearer {fake.api_key}":
            # like OpenAI, the 401 message echoes the key it was given: clients must scrub it
            given = (self.headers.get("Authorization") or "").removeprefix("Bearer ")
            entry["status"] = 401
            msg = {"error": {"message": f"Incorrect API key provided: {given}", "type": "invalid_request"}}
            self._send(401, json.dumps(msg).encode())
            return
        if fault == "500":
            entry["status"] = 500
            self._send(500, b'{"error": {"message": "injected internal error", "type": "server_error"}}')
            return
        if fault == "429":
            entry["status"] = 429
            headers = {"Retry-After": f"{fake.retry_after:g}",
                       "retry-after-ms": str(int(fake.retry_after * 1000))}
            self._send(429, b'{"error": {"message": "rate limited", "type": "rate_limit"}}', headers)
            return
        if fault == "disconnect":
            entry["status"] = 0
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if fault == "timeout" and fake._stopping.wait(fake.hang_s):
            self.close_connection = True
            return
        try:
            completion = fake._completion(body, fault)
        except _ScriptedError as err:
            entry["status"] = err.status
            self._send(err.status, json.dumps({"error": {"message": err.message}}).encode())
            return
        payload = json.dumps(completion).encode()
        if fault == "truncated":
            payload = payload[: len(payload) // 2]
        elif fault == "malformed":
            payload = b"<html>upstream proxy error: this is not JSON"
        entry["status"] = 200
        self._send(200, payload)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 1024  # the default listen backlog (5) drops connects from a burst of clients
    fake: FakeOpenAIServer

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.fake._lock:
            self.fake._conns.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.fake._lock:
            self.fake._conns.discard(request)
        super().shutdown_request(request)


class FakeOpenAIServer:
    """Test double for an OpenAI-compatible chat server (not a model): scripted replies, injected faults.

    Attributes: `url` ("http://127.0.0.1:<port>/v1"), `requests` (chat requests received, faulted ones
    included), `log` (per request: {"fault", "key", "status"}), `bodies` (the request JSONs, in arrival
    order), `in_flight` / `max_in_flight` (concurrent chat requests now / at most).
    """

    def __init__(self, responder: Callable[[dict[str, Any]], str | dict[str, Any]] | None = None,
                 fault_rate: float = 0.0,
                 faults: tuple[str, ...] = ("500", "429", "timeout", "truncated", "malformed", "refusal"),
                 seed: int = 0, retry_after: float = 0.05, hang_s: float = 5.0, model: str = "fake-vlm",
                 api_key: str | None = None):
        unknown = set(faults) - set(FAULT_KINDS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}; known: {FAULT_KINDS}")
        self.responder = responder or default_caption
        self.fault_rate = fault_rate
        self.faults = tuple(faults)
        self.seed = seed
        self.retry_after = retry_after
        self.hang_s = hang_s
        self.model = model
        self.api_key = api_key
        self.requests = 0
        self.log: list[dict[str, Any]] = []
        self.bodies: list[dict[str, Any]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.url = ""
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._conns: set[Any] = set()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> Self:
        if self._server is not None:
            return self
        self._stopping.clear()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.fake = self
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-openai-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._stopping.set()  # wakes handlers sleeping in a "timeout" fault
        self._server.shutdown()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:  # idle keep-alive connections would otherwise linger
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server, self._thread = None, None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- bookkeeping (called from handler threads) -------------------------------------------------
    def _record(self, fault: str | None, key: str, status: int) -> dict[str, Any]:
        entry = {"fault": fault, "key": key, "status": status}
        with self._lock:
            self.requests += 1
            self.log.append(entry)
        return entry

    def _admit(self, body: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
        key = request_key(body)
        with self._lock:
            counter = self.requests
            self.requests += 1
            fault = _pick_fault(self.seed, counter, self.fault_rate, self.faults)
            entry = {"fault": fault, "key": key, "status": 0}
            self.log.append(entry)
            self.bodies.append(body)
        return fault, entry

    def _enter(self) -> None:
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def _leave(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def _completion(self, body: dict[str, Any], fault: str | None) -> dict[str, Any]:
        finish = "stop"
        if fault == "refusal":
            text = REFUSAL
        else:
            reply = self.responder(body)
            if isinstance(reply, dict) and int(reply.get("status", 200)) >= 400:
                raise _ScriptedError(int(reply["status"]), str(reply.get("error", "scripted error")))
            if isinstance(reply, dict):
                text, finish = str(reply.get("content", "")), str(reply.get("finish_reason") or "stop")
            else:
                text = str(reply)
            if fault == "length":
                text, finish = text[: len(text) // 2], "length"
        text, cut = _cut_to_max_tokens(text, body.get("max_tokens") or body.get("max_completion_tokens"))
        if cut:
            finish = "length"
        with self._lock:
            n = self.requests
        prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in body.get("messages", []))
        completion_tokens = len(text.split())
        return {
            "id": f"chatcmpl-fake-{n}", "object": "chat.completion", "created": 0,
            "model": body.get("model") or self.model,
            "choices": [{"index": 0, "finish_reason": finish,
                         "message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }
