"""Hostile URL servers and URLs: headers dripped byte by byte, Retry-After 600 on every reply, a body shorter
than its Content-Length, private/loopback addresses (directly or through a redirect), credentials in URLs."""
from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable

import pytest

from polycap.schemas import Reason, Reject
from polycap.schemas.config import IngestConfig, SourceConfig
from polycap.transforms import fetch as fetch_mod
from polycap.transforms.download import UrlRow, download_row
from polycap.transforms.fetch import FetchError, blocked_address, fetch
from tests.conftest import jpeg_bytes

SRC = SourceConfig(kind="urls", path="l")
LOCAL = IngestConfig(timeout_s=1.0, connect_timeout_s=1.0, retries=0, allow_private_addresses=True)


class RawServer:
    """Accepts TCP connections on `host` and hands each to `handle(conn, request_bytes)` on its own thread."""

    def __init__(self, handle: Callable[[socket.socket, bytes], None], host: str = "127.0.0.1"):
        self.handle, self.requests = handle, []
        self.sock = socket.create_server((host, 0))
        self.url = f"http://{host}:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn):
        with conn:
            req = b""
            while b"\r\n\r\n" not in req:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                req += chunk
            self.requests.append(req)
            try:
                self.handle(conn, req)
            except OSError:
                pass

    def close(self):
        self.sock.close()


@pytest.fixture
def serve():
    servers = []

    def start(handle, host="127.0.0.1"):
        servers.append(RawServer(handle, host))
        return servers[-1]
    yield start
    for s in servers:
        s.close()


@pytest.mark.timeout(10)
def test_headers_dripped_byte_by_byte_hit_the_deadline(serve):
    def drip(conn, _):
        for b in b"HTTP/1.0 200 OK\r\nContent-Type: image/jpeg\r\n" * 20:
            conn.sendall(bytes([b]))
            time.sleep(0.3)
    srv = serve(drip)
    start = time.monotonic()
    with pytest.raises(FetchError) as e:
        fetch(srv.url + "/a.jpg", LOCAL)
    assert e.value.reason == Reason.DOWNLOAD_TIMEOUT and time.monotonic() - start < 3


@pytest.mark.timeout(10)
def test_retry_after_600_is_capped_by_timeout(serve):
    def busy(conn, _):
        conn.sendall(b"HTTP/1.0 503 Busy\r\nRetry-After: 600\r\nContent-Length: 0\r\n\r\n")
    srv = serve(busy)
    cfg = IngestConfig(timeout_s=0.5, retries=2, allow_private_addresses=True)
    with pytest.raises(FetchError) as e:
        fetch(srv.url + "/a.jpg", cfg)
    assert "HTTP 503" in e.value.detail and "after 3 attempts" in e.value.detail and len(srv.requests) == 3


@pytest.mark.timeout(10)
def test_short_body_is_a_retried_download_error(serve):
    def short(conn, _):
        conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10)
    srv = serve(short)
    with pytest.raises(FetchError) as e:
        fetch(srv.url + "/a.jpg", IngestConfig(timeout_s=1, retries=1, allow_private_addresses=True))
    assert e.value.reason == Reason.DOWNLOAD_FAILED and "short body: 10 of 1000" in e.value.detail
    assert len(srv.requests) == 2


@pytest.mark.parametrize("ip", ["127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "0.0.0.0",
                                "100.64.0.1", "224.0.0.1", "::1", "::", "fe80::1", "fc00::1", "fd12::1", "ff02::1",
                                "::ffff:127.0.0.1", "::ffff:10.0.0.1", "2002:7f00:1::1"])
def test_non_public_addresses_are_blocked(ip):
    assert blocked_address(ip) is not None


@pytest.mark.parametrize("ip", ["93.184.216.34", "8.8.8.8", "2606:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses_pass(ip):
    assert blocked_address(ip) is None


@pytest.mark.timeout(10)
@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::1]", "[::ffff:127.0.0.1]", "0.0.0.0"])
def test_loopback_refused_by_default_without_connecting(serve, host):
    srv = serve(lambda conn, _: conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok"))
    port = srv.url.rsplit(":", 1)[1]
    out = download_row(UrlRow(f"http://{host}:{port}/a.jpg", None), SRC, IngestConfig(timeout_s=1, retries=0))
    assert isinstance(out, Reject) and out.reason == Reason.BLOCKED_ADDRESS
    assert srv.requests == []


@pytest.mark.timeout(10)
def test_redirect_to_a_blocked_address_is_refused_at_that_hop(serve, monkeypatch):
    """Two loopback servers stand for a public one (127.0.0.1) and an internal one (127.0.0.2): the policy is
    narrowed to block only the second, and the first redirects to it."""
    inner = serve(lambda conn, _: conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 6\r\n\r\nsecret"), "127.0.0.2")

    def redirect(conn, _):
        conn.sendall(f"HTTP/1.0 302 Found\r\nLocation: {inner.url}/meta\r\nContent-Length: 0\r\n\r\n".encode())
    outer = serve(redirect)
    monkeypatch.setattr(fetch_mod, "blocked_address", lambda ip: "internal" if ip == "127.0.0.2" else None)
    with pytest.raises(FetchError) as e:
        fetch(outer.url + "/a.jpg", IngestConfig(timeout_s=2, retries=0))
    assert e.value.reason == Reason.BLOCKED_ADDRESS and len(outer.requests) == 1 and inner.requests == []


@pytest.mark.timeout(10)
def test_connection_goes_to_the_checked_address(serve, monkeypatch):
    """The name is resolved once; a resolver that answers differently the second time is never asked again."""
    body = jpeg_bytes()
    srv = serve(lambda conn, _: conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body))
    port = int(srv.url.rsplit(":", 1)[1])
    answers = iter([[(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))],
                    [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.9.9.9", port))]])
    real, asked = socket.getaddrinfo, []

    def resolver(host, *a, **k):
        if host != "images.example":
            return real(host, *a, **k)
        asked.append(host)
        return next(answers)
    monkeypatch.setattr(fetch_mod.socket, "getaddrinfo", resolver)
    got, info = fetch(f"http://images.example:{port}/a.jpg", LOCAL)
    assert got == body and info["status"] == 200 and asked == ["images.example"]
    assert srv.requests[0].split(b"\r\n")[0] == b"GET /a.jpg HTTP/1.1"
    assert b"Host: images.example" in srv.requests[0]


@pytest.mark.timeout(10)
def test_credentials_never_reach_the_server_or_the_reject(serve):
    srv = serve(lambda conn, _: conn.sendall(b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n"))
    from polycap.transforms.download import rows_from_list
    url = srv.url.replace("http://", "http://user:hunter2@") + "/a.jpg"
    [row] = list(rows_from_list("l.txt", [{"url": url}], SRC))
    out = download_row(row, SRC, LOCAL)
    assert isinstance(out, Reject) and out.reason == Reason.DOWNLOAD_FAILED
    assert "hunter2" not in out.source_uri + out.detail and b"hunter2" not in srv.requests[0]
    assert b"Authorization" not in srv.requests[0]


@pytest.mark.timeout(10)
def test_a_resolver_that_never_answers_ends_at_the_deadline(monkeypatch):
    stuck = threading.Event()
    monkeypatch.setattr(fetch_mod.socket, "getaddrinfo", lambda *a, **k: stuck.wait(5))
    start = time.monotonic()
    with pytest.raises(FetchError) as e:
        fetch("http://slow-dns.example/a.jpg", IngestConfig(timeout_s=0.5, retries=0))
    stuck.set()
    assert e.value.reason == Reason.DOWNLOAD_TIMEOUT and "DNS" in e.value.detail and time.monotonic() - start < 2
