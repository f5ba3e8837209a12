"""A named fake for download tests: a real HTTP server on 127.0.0.1 serving files, with fault routes."""
from __future__ import annotations

import collections
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

FAULTS = """
/_/status/<code>             reply with that status
/_/flaky/<n>/<prefix>/<path> 500 for the first n requests of this exact path, then the file
/_/ratelimit/<prefix>/<path> 429 with Retry-After: 0 on the first request, then the file
/_/slow/<seconds>            sleep, then a tiny body
/_/drip/<seconds>            2 bytes every 0.2 s for <seconds> (each read is fast; the total is not)
/_/huge/<n>                  n bytes with no Content-Length (HTTP/1.0 close-delimited)
/_/huge-cl/<n>               Content-Length: n, then n bytes
/_/redirect/<prefix>/<path>  302 to the file
/_/redirect-ftp              302 to ftp://127.0.0.1/x.jpg
"""


class ImageServer:
    """`ImageServer({"photos": Path(...)})` serves `/photos/<relpath>` from that folder, plus FAULTS."""

    def __init__(self, roots: dict[str, Path]):
        self.roots = {k: Path(v).resolve() for k, v in roots.items()}
        self.hits: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()
        handler = type("Handler", (_Handler,), {"server_ref": self})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.base = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> ImageServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def url(self, path: str) -> str:
        return f"{self.base}/{path.lstrip('/')}"

    def count(self, path: str) -> int:
        with self._lock:
            self.hits[path] += 1
            return self.hits[path]

    def file(self, rel: str) -> Path | None:
        prefix, _, rest = rel.partition("/")
        root = self.roots.get(prefix)
        if root is None:
            return None
        p = (root / rest).resolve()
        return p if p.is_file() and root in p.parents else None


class _Handler(BaseHTTPRequestHandler):
    server_ref: ImageServer
    protocol_version = "HTTP/1.0"

    def log_message(self, *args) -> None:  # keep test output quiet
        pass

    def _send(self, code: int, body: bytes = b"", ctype: str = "application/octet-stream",
              headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _file(self, rel: str) -> None:
        p = self.server_ref.file(rel)
        if p is None:
            self._send(404, b"not found", "text/plain")
        else:
            self._send(200, p.read_bytes(), "image/jpeg" if p.suffix == ".jpg" else "application/octet-stream")

    def do_GET(self) -> None:
        path = self.path.split("?")[0].lstrip("/")
        n = self.server_ref.count(path)
        route, _, arg = path[2:].partition("/")
        try:
            if not path.startswith("_/"):
                self._file(path)
            else:
                getattr(self, f"route_{route.replace('-', '_')}")(arg, n)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (max size, timeout): expected

    def route_status(self, arg: str, n: int) -> None:
        self._send(int(arg), f"status {arg}".encode(), "text/plain")

    def route_flaky(self, arg: str, n: int) -> None:
        fails, _, rel = arg.partition("/")
        if n <= int(fails):
            return self._send(500, b"try again", "text/plain")
        self._file(rel)

    def route_ratelimit(self, arg: str, n: int) -> None:
        if n == 1:
            return self._send(429, b"slow down", "text/plain", {"Retry-After": "0"})
        self._file(arg)

    def route_slow(self, arg: str, n: int) -> None:
        time.sleep(float(arg))
        self._send(200, b"late", "text/plain")

    def route_drip(self, arg: str, n: int) -> None:
        self.send_response(200)
        self.end_headers()
        end = time.monotonic() + float(arg)
        while time.monotonic() < end:
            self.wfile.write(b"..")
            self.wfile.flush()
            time.sleep(0.2)

    def route_huge(self, arg: str, n: int) -> None:
        self.send_response(200)
        self.end_headers()
        chunk = b"\0" * 65536
        for _ in range(int(arg) // len(chunk) + 1):
            self.wfile.write(chunk)

    def route_huge_cl(self, arg: str, n: int) -> None:
        self.send_response(200)
        self.send_header("Content-Length", arg)
        self.end_headers()
        chunk = b"\0" * 65536
        for _ in range(int(arg) // len(chunk) + 1):
            self.wfile.write(chunk)

    def route_redirect(self, arg: str, n: int) -> None:
        self._send(302, b"", headers={"Location": f"/{arg}"})

    def route_redirect_ftp(self, arg: str, n: int) -> None:
        self._send(302, b"", headers={"Location": "ftp://127.0.0.1/x.jpg"})
