"""The lean HTTP/1.1 client (transforms/backends/http1.py) against scripted raw-socket servers and the fake
OpenAI server: framing (Content-Length, chunked, to EOF, gzip), keep-alive reuse, servers that close."""
from __future__ import annotations

import asyncio
import gzip

import pytest

from polycap.transforms.backends.http1 import Http1Pool, HttpError, proxy_for


async def _serve(replies: list[bytes], seen: list[bytes]):
    """A server that answers the n-th request (over any connection) with replies[n]; b"" = close silently.
    A reply may end with b"<close>" to close the connection after it."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                                  if line.lower().startswith(b"content-length")))
                seen.append(head + await reader.readexactly(length))
                reply = replies[len(seen) - 1]
                writer.write(reply.removesuffix(b"<close>"))
                await writer.drain()
                if not reply or reply.endswith(b"<close>"):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1"


def _ok(body: bytes, extra: str = "") -> bytes:
    return f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode() + body


def _run(replies: list[bytes], bodies: list[bytes], pause_s: float = 0.0):
    async def go():
        seen: list[bytes] = []
        server, url = await _serve(replies, seen)
        pool = Http1Pool(url, {"Authorization": "Bearer k"})
        out = []
        try:
            for body in bodies:
                try:
                    out.append(await pool.post("/chat/completions", body))
                except HttpError as e:
                    out.append(e)
                await asyncio.sleep(pause_s)
        finally:
            await pool.close()
            server.close()
        return out, seen, pool.opened

    return asyncio.run(go())


def test_framings_and_keep_alive_reuse():
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4;x=1\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\nT: v\r\n\r\n"
    gz = gzip.compress(b'{"z": 1}')
    replies = [_ok(b'{"n": 1}', "X-Thing: a\r\n"), chunked, _ok(gz, "Content-Encoding: gzip\r\n"),
               b"HTTP/1.1 100 Continue\r\n\r\n" + _ok(b"{}"), b"HTTP/1.0 200 OK\r\n\r\nto the end<close>"]
    out, seen, opened = _run(replies, [b'{"q": 1}', b"{}", b"{}", b"{}", b"{}"])
    assert [r.body for r in out] == [b'{"n": 1}', b'{"a":1}', b'{"z": 1}', b"{}", b"to the end"]
    assert out[0].status == 200 and out[0].get("x-thing") == "a" and out[0].get("X-THING") == "a"
    assert opened == 1                       # five requests, one keep-alive connection
    head = seen[0].decode()
    assert head.startswith("POST /v1/chat/completions HTTP/1.1\r\n")
    assert "Authorization: Bearer k\r\n" in head and "Content-Type: application/json\r\n" in head
    assert head.endswith('Content-Length: 8\r\n\r\n{"q": 1}')


def test_a_connection_the_server_closed_is_not_reused():
    # the server closes after each answer without saying so: the idle connection is seen at EOF and replaced
    replies = [_ok(b"1") + b"<close>", _ok(b"2") + b"<close>", _ok(b"3")]
    out, _, opened = _run(replies, [b"{}"] * 3, pause_s=0.05)
    assert [r.body for r in out] == [b"1", b"2", b"3"] and opened == 3
    # "Connection: close" is honoured without waiting for the EOF
    out, _, opened = _run([_ok(b"1", "Connection: close\r\n"), _ok(b"2")], [b"{}"] * 2)
    assert [r.body for r in out] == [b"1", b"2"] and opened == 2


@pytest.mark.parametrize("reply, message", [
    (b"", "without a response"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{\"a\"<close>", "before the response was complete"),
    (b"SMTP ready\r\n\r\n", "bad status line"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", "bad Content-Length"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "bad chunk size"),
])
def test_broken_answers_are_http_errors(reply, message):
    (err,), _, _ = _run([reply], [b"{}"])
    assert isinstance(err, HttpError) and message in str(err)


def test_a_body_that_does_not_decompress_is_malformed_not_a_lost_connection():
    async def go():
        server, url = await _serve([_ok(b"not gzip", "Content-Encoding: gzip\r\n")], [])
        pool = Http1Pool(url, {})
        try:
            with pytest.raises(ValueError, match="does not decompress"):
                await pool.post("/x", b"{}")
        finally:
            await pool.close()
            server.close()

    asyncio.run(go())


def test_refused_connection_and_bad_url():
    async def go():
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        server.close()
        await server.wait_closed()
        with pytest.raises(HttpError, match="cannot connect"):
            await Http1Pool(f"http://127.0.0.1:{port}/v1", {}).post("/x", b"{}")

    asyncio.run(go())
    with pytest.raises(ValueError, match="not an http"):
        Http1Pool("ftp://host/v1", {})


def test_proxy_from_the_environment(monkeypatch):
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY",
                 "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    assert proxy_for("http://10.0.0.5:8000/v1") is None
    monkeypatch.setenv("HTTP_PROXY", "http://proxy:3128")
    assert proxy_for("http://10.0.0.5:8000/v1") == "http://proxy:3128"
    assert proxy_for("https://api.example.com/v1") is None
    monkeypatch.setenv("NO_PROXY", "10.0.0.5")
    assert proxy_for("http://10.0.0.5:8000/v1") is None
