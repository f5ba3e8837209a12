"""Ingest inputs within their budgets: list an input folder (every entry an input or a refusal), keep links
and paths inside their root, read files and (compressed) list streams with a byte cap and a deadline.

Input files are the user's data, not run artifacts: reads go through `sharding.fs`, but the checks that only
make sense on a local disk (file type, symlink targets, folder walk) use `os` on local paths. The file type is
checked before a file is opened, so a FIFO or a device is never opened (opening a FIFO blocks forever)."""
from __future__ import annotations

import bz2
import contextlib
import gzip
import io
import os
import posixpath
import stat
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any, cast

from polycap.schemas import Reason
from polycap.schemas.config import IngestConfig
from polycap.sharding import fs

GLOB_CHARS = "*?["
READ_CHUNK = 1024 * 1024


class BudgetError(Exception):
    """A read went over one of its budgets (bytes or time) or hit a file it must not open."""

    def __init__(self, reason: Reason, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


@dataclass(frozen=True)
class Refused:
    """An input found while listing that is counted and rejected without being read."""

    path: str
    reason: Reason
    detail: str


# ---- paths ----

def has_glob(path: str) -> bool:
    return any(c in path for c in GLOB_CHARS)


def escape_glob(path: str) -> str:
    return "".join(f"[{c}]" if c in GLOB_CHARS else c for c in path)


def _local(path: str) -> str:
    """The disk path of a local `path` (callers check fs.is_local first)."""
    return fs.local_path(path) or path


def inside(path: str, root: str) -> bool:
    """`path` lies within `root` (both resolved through symlinks on a local disk; lexically elsewhere)."""
    if fs.is_local(path) and fs.is_local(root):
        real, base = os.path.realpath(_local(path)), os.path.realpath(_local(root))
        return real == base or real.startswith(base.rstrip("/") + "/")
    norm = path if "://" not in path else path.split("://", 1)[0] + "://" + posixpath.normpath(path.split("://", 1)[1])
    return norm.startswith(root.rstrip("/") + "/")


def missing(path: str) -> bool:
    """Nothing at `path` (a dangling link is something: it is refused as NOT_A_FILE, not reported missing)."""
    return not os.path.lexists(_local(path)) if fs.is_local(path) else not fs.is_file(path)


def entry_problem(path: str, root: str | None, cfg: IngestConfig) -> tuple[Reason, str] | None:
    """Why a local path must not be opened: NOT_A_FILE (FIFO, device, socket, folder, dangling link),
    UNSAFE_PATH (a link leaving `root`, unless ingest.follow_symlinks); None for a regular file or remote path."""
    if not fs.is_local(path):
        return None
    p = _local(path)
    try:
        st = os.lstat(p)
    except OSError as e:
        return Reason.UNREADABLE, f"{type(e).__name__}: {e.strerror or e}"
    if stat.S_ISLNK(st.st_mode):
        try:
            st = os.stat(p)
        except OSError:
            return Reason.NOT_A_FILE, f"dangling symlink to {os.readlink(p)!r}"
        if root is not None and not cfg.follow_symlinks and not inside(p, root):
            return (Reason.UNSAFE_PATH, f"symlink to {os.path.realpath(p)!r} outside {root!r} "
                                        "(ingest.follow_symlinks is false)")
    if not stat.S_ISREG(st.st_mode):
        kind = ("FIFO" if stat.S_ISFIFO(st.st_mode) else "socket" if stat.S_ISSOCK(st.st_mode)
                else "device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)
                else "folder" if stat.S_ISDIR(st.st_mode) else "special file")
        return Reason.NOT_A_FILE, f"{kind}, not a regular file: not opened"
    return None


# ---- listing ----

def _walk_local(root: str, exts: tuple[str, ...] | None, cfg: IngestConfig) -> Iterator[str | Refused]:
    """Every entry below `root`: files wanted by `exts` (None = every file is an input) as paths, and what
    is not read as a Refused: hidden names, links leaving the root, special files, unlistable folders."""
    stack, seen = [root], {os.path.realpath(root)}
    while stack:
        folder = stack.pop()
        try:
            entries = sorted(os.scandir(folder), key=lambda d: d.name)
        except OSError as err:
            yield Refused(folder, Reason.UNREADABLE, f"cannot list folder: {type(err).__name__}: {err.strerror or err}")
            continue
        for entry in entries:
            hidden = entry.name.startswith(".")
            if entry.is_dir(follow_symlinks=False):
                if not hidden:
                    stack.append(entry.path)
                elif exts is None:
                    yield Refused(entry.path, Reason.HIDDEN_FILE, "hidden folder: not read")
                continue
            if entry.is_symlink() and os.path.isdir(entry.path):
                real = os.path.realpath(entry.path)
                if cfg.follow_symlinks and not hidden and real not in seen:
                    seen.add(real)
                    stack.append(entry.path)
                elif exts is None and not cfg.follow_symlinks:
                    yield Refused(entry.path, Reason.UNSAFE_PATH, f"symlink to folder {real!r}: not followed "
                                                              "(ingest.follow_symlinks is false)")
                continue
            if exts is not None and not entry.name.lower().endswith(exts):
                continue
            if hidden:
                yield Refused(entry.path, Reason.HIDDEN_FILE, "hidden file: not read")
                continue
            problem = entry_problem(entry.path, root, cfg)
            yield Refused(entry.path, *problem) if problem else entry.path


def _wanted(paths: list[str], exts: tuple[str, ...] | None) -> list[str]:
    return [p for p in paths if exts is None or p.lower().endswith(exts)]


def list_inputs(path: str, exts: tuple[str, ...] | None, cfg: IngestConfig) -> list[str | Refused]:
    """The inputs of a source path: a folder (walked), a file, or a glob. A path that exists as written is
    read literally even if it contains glob characters (`photos[2024]`); only a missing one is a glob."""
    if fs.is_local(path):
        p = _local(path)
        if os.path.isdir(p):
            return list(_walk_local(p.rstrip("/") or "/", exts, cfg))
        if os.path.lexists(p):
            problem = entry_problem(p, None, cfg)       # a file named explicitly: its link is the user's choice
            return [Refused(p, *problem) if problem else p]
        if not has_glob(p):
            return []
        root = p[: p.rfind("/", 0, min(p.index(c) for c in GLOB_CHARS if c in p)) + 1] or "./"
        out: list[str | Refused] = []
        for f in _wanted(fs.glob(p), exts):
            problem = entry_problem(f, root, cfg)
            out.append(Refused(f, *problem) if problem else f)
        return out
    if fs.is_file(path):
        return [path]
    folder = path.rstrip("/")
    found = fs.glob(escape_glob(folder) + "/**")
    if not found and has_glob(path):
        found = fs.glob(path)
        folder = path[: path.rfind("/", 0, min(path.index(c) for c in GLOB_CHARS if c in path))]
    out = []
    for f in _wanted(found, exts):
        rel = f[len(folder) + 1:] if f.startswith(folder + "/") else posixpath.basename(f)
        if any(part.startswith(".") for part in rel.split("/")):
            if exts is None:
                out.append(Refused(f, Reason.HIDDEN_FILE, "hidden file: not read"))
            continue
        out.append(f)
    return out


def iter_inputs(path: str, exts: tuple[str, ...] | None, cfg: IngestConfig) -> Iterator[str | Refused]:
    """`list_inputs` as a stream: a local folder is walked lazily, one folder's entries at a time, in the
    same order (a run in waves lists a million inputs without holding them)."""
    if fs.is_local(path) and os.path.isdir(_local(path)):
        yield from _walk_local(_local(path).rstrip("/") or "/", exts, cfg)
    else:
        yield from list_inputs(path, exts, cfg)


# ---- budgeted reads ----

class LimitedReader(io.RawIOBase):
    """A raw byte stream over `f` that never returns more than `limit` + 1 bytes in total and raises
    BudgetError (TOO_LARGE_INPUT / READ_TIMEOUT) as soon as the limit is passed or the deadline is."""

    def __init__(self, f: Any, limit: int, deadline: float, what: str):
        super().__init__()
        self.f, self.limit, self.deadline, self.what, self.n = f, limit, deadline, what, 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        if time.monotonic() > self.deadline:
            raise BudgetError(Reason.READ_TIMEOUT, f"{self.what}: not read within ingest.read_timeout_s")
        want = min(len(b), self.limit + 1 - self.n)
        data = self.f.read(want) if want > 0 else b""
        self.n += len(data)
        if self.n > self.limit:
            raise BudgetError(Reason.TOO_LARGE_INPUT, f"{self.what}: more than {self.limit} bytes")
        b[: len(data)] = data
        return len(data)


def deadline_of(cfg: IngestConfig) -> float:
    return time.monotonic() + cfg.read_timeout_s


def read_limited(path: str, limit: int, cfg: IngestConfig, what: str, root: str | None = None) -> bytes:
    """A whole input file, refused before opening when it is not a regular file (or leaves `root`)."""
    problem = entry_problem(path, root, cfg)
    if problem:
        raise BudgetError(*problem)
    if fs.is_local(path):
        return _read_local(_local(path), limit, deadline_of(cfg), what)
    with fs.open_read(path) as f:
        reader = LimitedReader(f, limit, deadline_of(cfg), what)
        buf = bytearray()
        while chunk := reader.read(READ_CHUNK):
            buf += chunk
        return bytes(buf)


def _read_local(path: str, limit: int, deadline: float, what: str) -> bytes:
    """A local regular file read whole with its size from the open file: a file found larger than `limit`
    is refused before any byte is read, one that grows past it while read is refused when it does, and the
    deadline is checked between chunks of READ_CHUNK. A few system calls a file (each lets go of the GIL,
    which the decode threads then hold) instead of the ~10 of Beam's file object and LimitedReader."""
    with open(path, "rb", buffering=0) as f:
        size = os.fstat(f.fileno()).st_size
        if size > limit:
            raise BudgetError(Reason.TOO_LARGE_INPUT, f"{what}: {size} bytes > {limit}")
        parts, n = [], 0
        while True:
            if time.monotonic() > deadline:
                raise BudgetError(Reason.READ_TIMEOUT, f"{what}: not read within ingest.read_timeout_s")
            # +1 past the size: a read short of what was asked is the end; past the size (a file that grew
            # while read) in whole chunks up to the limit
            want = min(size - n, READ_CHUNK) + 1 if n < size else READ_CHUNK
            chunk = f.read(want)
            parts.append(chunk)
            n += len(chunk)
            if n > limit:
                raise BudgetError(Reason.TOO_LARGE_INPUT, f"{what}: more than {limit} bytes")
            if len(chunk) < want:
                break
        return parts[0] if len(parts) == 1 else b"".join(parts)


class _Inflate(io.RawIOBase):
    """Raw deflate / zlib stream (`.deflate`), decompressed in bounded steps."""

    def __init__(self, f: IO[bytes]):
        super().__init__()
        self.f, self.d, self.buf = f, zlib.decompressobj(), b""

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while not self.buf and not self.d.eof:
            raw = self.f.read(READ_CHUNK)
            self.buf = self.d.decompress(raw, len(b)) if raw else self.d.flush()
            if not raw:
                break
        if not self.buf and self.d.unconsumed_tail:
            self.buf = self.d.decompress(self.d.unconsumed_tail, len(b))
        n = min(len(b), len(self.buf))
        b[:n], self.buf = self.buf[:n], self.buf[n:]
        return n


def decompressing(raw: IO[bytes], name: str) -> IO[bytes]:
    """`raw` decompressed by its name's suffix (.gz .bz2 .zst .deflate; anything else as is)."""
    name = name.lower()
    if name.endswith(".gz"):
        return cast(IO[bytes], gzip.GzipFile(fileobj=raw, mode="rb"))
    if name.endswith(".bz2"):
        return cast(IO[bytes], bz2.BZ2File(raw, mode="rb"))
    if name.endswith(".zst"):
        try:
            import zstandard
        except ImportError as e:
            raise BudgetError(Reason.UNREADABLE, "reading .zst needs the `zstandard` package "
                                                 "(pip install zstandard)") from e
        return zstandard.ZstdDecompressor().stream_reader(raw)
    if name.endswith(".deflate"):
        return io.BufferedReader(_Inflate(raw))
    return raw


@contextlib.contextmanager
def open_text(path: str, cfg: IngestConfig) -> Iterator[io.TextIOWrapper]:
    """A list file as text: decompressed by suffix, BOM dropped, undecodable bytes -> U+FFFD, and no more than
    ingest.max_list_bytes read, compressed or not, within ingest.read_timeout_s."""
    deadline = deadline_of(cfg)
    with fs.open_read(path) as f:
        raw = io.BufferedReader(LimitedReader(f, cfg.max_list_bytes, deadline, "list file (ingest.max_list_bytes)"))
        plain = decompressing(raw, path)
        capped = LimitedReader(plain, cfg.max_list_bytes, deadline, "list after decompression (ingest.max_list_bytes)")
        yield io.TextIOWrapper(io.BufferedReader(capped), encoding="utf-8-sig", errors="replace", newline="")


def bounded_lines(text: IO[str], max_chars: int) -> Iterator[str | None]:
    """Lines of `text`; a line longer than `max_chars` is skipped to its end (never held whole) and yields None."""
    while line := text.readline(max_chars + 1):
        if len(line) > max_chars and not line.endswith(("\n", "\r")):
            while (rest := text.readline(READ_CHUNK)) and not rest.endswith(("\n", "\r")):
                pass
            yield None
        else:
            yield line
