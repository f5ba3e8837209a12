"""A lean HTTP/1.1 keep-alive client on asyncio streams: JSON POSTs to one server, nothing else.

The OpenAI backend's default path (`options.client: lean`). Per request it does what a chat call needs
and no more: one header block and the body in one write, the status line and headers read in one call, the
body by Content-Length (or chunked, or up to EOF), idle connections reused LIFO. Against an instant server
this costs a fraction of the OpenAI SDK's per-request work (httpx + httpcore + anyio + pydantic), which is
what let the client side, not the GPU, set the pace (bench/caption_client.py).

Not handled here (the backend uses the SDK instead, `proxy_for`): proxies from the environment. Redirects
are not followed (a chat endpoint does not redirect; a 3xx is an HTTP error). The caller bounds each call's
total time (`asyncio.wait_for`); a connection whose call failed or was cancelled is closed, never reused.
"""
from __future__ import annotations

import asyncio
import gzip
import ssl
import urllib.parse
import urllib.request
import zlib
from dataclasses import dataclass

_HEAD_END = b"\r\n\r\n"


class HttpError(OSError):
    """The connection failed or the server broke the protocol (closed early, bad status line, bad chunk)."""


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]   # names lower-cased; a repeated header keeps its last value
    body: bytes

    def get(self, name: str) -> str | None:
        return self.headers.get(name.lower())


def proxy_for(url: str) -> str | None:
    """The proxy the environment (HTTP(S)_PROXY, ALL_PROXY, NO_PROXY) sets for `url`, as httpx would use."""
    parts = urllib.parse.urlsplit(url)
    proxies = urllib.request.getproxies()
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    if not proxy or urllib.request.proxy_bypass(parts.hostname or ""):
        return None
    return proxy


class Http1Pool:
    """Keep-alive connections to the server of `base_url`; `post(path, body)` -> Response.

    Not thread-safe: use it from one event loop. Concurrency is the caller's to bound (a semaphore);
    the pool opens a connection whenever none is idle and keeps at most `max_idle` idle ones.
    """

    def __init__(self, base_url: str, headers: dict[str, str], max_idle: int = 64):
        parts = urllib.parse.urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.prefix = parts.path.rstrip("/")
        self.ssl = ssl.create_default_context() if parts.scheme == "https" else None  # SSL_CERT_FILE/DIR honoured
        default_port = self.port == (443 if self.ssl else 80)
        host = f"[{self.host}]" if ":" in self.host else self.host
        fixed = {"Host": host if default_port else f"{host}:{self.port}", "Accept": "application/json",
                 "Accept-Encoding": "gzip, deflate", "Content-Type": "application/json", **headers}
        self._fixed = "".join(f"{k}: {v}\r\n" for k, v in fixed.items())
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.max_idle = max_idle
        self.opened = 0      # connections opened (tests and benches read it)

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        while self._idle:
            reader, writer = self._idle.pop()
            if not reader.at_eof() and not writer.is_closing():   # the server has not closed it meanwhile
                return reader, writer
            writer.close()
        try:
            conn = await asyncio.open_connection(self.host, self.port, ssl=self.ssl,
                                                 server_hostname=self.host if self.ssl else None,
                                                 limit=1 << 20)
        except OSError as e:
            raise HttpError(f"cannot connect to {self.host}:{self.port}: {e}") from e
        self.opened += 1
        return conn

    async def post(self, path: str, body: bytes) -> Response:
        reader, writer = await self._connect()
        try:
            head = (f"POST {self.prefix}{path} HTTP/1.1\r\n{self._fixed}"
                    f"Content-Length: {len(body)}\r\n\r\n").encode("latin-1")
            writer.write(head + body)
            await writer.drain()
            response, reusable = await _read_response(reader)
        except BaseException as e:   # failed or cancelled mid-exchange: the connection state is unknown
            writer.close()
            if isinstance(e, (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError)) \
                    or (isinstance(e, OSError) and not isinstance(e, HttpError)):
                raise HttpError(_describe(e)) from e
            raise
        if reusable and len(self._idle) < self.max_idle:
            self._idle.append((reader, writer))
        else:
            writer.close()
        return response

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for _, writer in idle:
            writer.close()
        for _, writer in idle:
            try:
                await writer.wait_closed()
            except OSError:
                pass


def _describe(e: BaseException) -> str:
    if isinstance(e, asyncio.IncompleteReadError):
        return "server closed the connection before the response was complete" if e.partial or e.expected \
            else "server closed the connection without a response"
    return f"{type(e).__name__}: {e}"


async def _read_response(reader: asyncio.StreamReader) -> tuple[Response, bool]:
    while True:
        try:
            raw = await reader.readuntil(_HEAD_END)
        except asyncio.IncompleteReadError as e:
            if not e.partial:
                raise HttpError("server closed the connection without a response") from e
            raise
        lines = raw.decode("latin-1").split("\r\n")
        status_line = lines[0].split(" ", 2)
        if len(status_line) < 2 or not status_line[0].startswith("HTTP/") or not status_line[1].isdigit():
            raise HttpError(f"bad status line {lines[0][:100]!r}")
        status = int(status_line[1])
        if 100 <= status < 200:   # an interim response (100 Continue): the real one follows
            continue
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if line:
                name, sep, value = line.partition(":")
                if not sep:
                    raise HttpError(f"bad header line {line[:100]!r}")
                headers[name.strip().lower()] = value.strip()
        break
    connection = headers.get("connection", "").lower()
    reusable = status_line[0] == "HTTP/1.1" and "close" not in connection
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = await _read_chunked(reader)
    elif (length := headers.get("content-length")) is not None:
        if not length.isdigit():
            raise HttpError(f"bad Content-Length {length[:40]!r}")
        body = await reader.readexactly(int(length))
    elif status in (204, 304):
        body = b""
    else:  # no length: the body runs to the end of the connection
        body, reusable = await reader.read(), False
    encoding = headers.get("content-encoding", "").lower()
    try:
        if encoding in ("gzip", "x-gzip"):
            body = gzip.decompress(body)
        elif encoding == "deflate":
            body = zlib.decompress(body)
    except (OSError, EOFError, zlib.error) as e:   # a whole body that does not decode: malformed, not a lost link
        raise ValueError(f"{encoding} body does not decompress: {e}") from None
    return Response(status, headers, body), reusable


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    while True:
        size_line = (await reader.readuntil(b"\r\n")).split(b";", 1)[0].strip()
        try:
            size = int(size_line, 16)
        except ValueError:
            raise HttpError(f"bad chunk size {size_line[:40]!r}") from None
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":   # trailers, then the blank line
                pass
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        if await reader.readexactly(2) != b"\r\n":
            raise HttpError("bad chunk terminator")
