"""Live progress of a job: workers write running counts to a side channel, the launcher sums and prints them.

Beam metrics are only readable once a job ends on the DirectRunner (it runs the graph inside `run()`), so
progress takes a side channel that works on every runner: `CountProgress` (a pass-through branch fused with
the stage it watches) adds to per-process counters, and each worker process writes them atomically, at most
once every `every_s` seconds and once more when the DoFn is torn down or the process exits, to
`<output>/_progress/<run id>/<worker>.json` through the filesystem layer. `ProgressMonitor` (a launcher
thread) sums those files every few seconds and prints one line: inputs seen, kept, rejected, rate, and an ETA
when the number of inputs is known. On a terminal the line is rewritten in place; elsewhere (CI logs) it is
one plain line per interval. The launcher removes `_progress/` when the run ends.
"""
from __future__ import annotations

import atexit
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable
from typing import IO, Any

import apache_beam as beam

from polycap.sharding import fs

PROGRESS_DIR = "_progress"


def progress_dir(output_dir: str, run_id: str) -> str:
    return fs.join(fs.abs_path(output_dir), PROGRESS_DIR, run_id)


class _Counters:
    """This process's counts for one progress folder, written as one file (never more than every `every_s`)."""

    def __init__(self, folder: str, every_s: float):
        self.folder, self.every_s = folder, every_s
        self.path = fs.join(folder, f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}.json")
        self.counts: dict[str, int] = {}
        self.lock, self.write_lock = threading.Lock(), threading.Lock()
        self.last = 0.0
        self.dirty = False

    def add(self, name: str, n: int = 1) -> None:
        with self.lock:
            self.counts[name] = self.counts.get(name, 0) + n
            self.dirty = True
            due = time.monotonic() - self.last >= self.every_s
        if due:
            self.flush(block=False)

    def flush(self, block: bool = True) -> None:
        if not self.write_lock.acquire(blocking=block):
            return                                    # another thread is writing; it will catch up next time
        try:
            with self.lock:
                if not self.dirty:
                    return
                snapshot, self.dirty, self.last = dict(self.counts), False, time.monotonic()
            try:
                fs.write_json(self.path, snapshot, indent=None)
            except Exception:  # noqa: BLE001 - progress is a nicety; a failed write never fails the job
                with self.lock:
                    self.dirty = True
        finally:
            self.write_lock.release()


_REGISTRY: dict[str, _Counters] = {}
_REGISTRY_LOCK = threading.Lock()


def counters(folder: str, every_s: float) -> _Counters:
    with _REGISTRY_LOCK:
        if folder not in _REGISTRY:
            _REGISTRY[folder] = _Counters(folder, every_s)
        return _REGISTRY[folder]


def flush_all() -> None:
    """Write every pending count of this process (teardown, exit, and the launcher of an in-process run)."""
    for c in list(_REGISTRY.values()):
        c.flush()


atexit.register(flush_all)


class _CountFn(beam.DoFn):
    def __init__(self, folder: str, name: str, every_s: float, weight: Callable[[Any], int] | None):
        self.folder, self.name, self.every_s, self.weight = folder, name, every_s, weight

    def setup(self) -> None:
        self.c = counters(self.folder, self.every_s)

    def process(self, element: Any):
        self.c.add(self.name, self.weight(element) if self.weight else 1)
        return ()

    def finish_bundle(self) -> None:
        if time.monotonic() - self.c.last >= self.every_s:
            self.c.flush(block=False)

    def teardown(self) -> None:
        self.c.flush()


class CountProgress(beam.PTransform):
    """A branch off `pcoll` that adds each element (or `weight(element)`) to the progress count `name`;
    returns nothing (apply it beside the stage it watches)."""

    def __init__(self, folder: str, name: str, every_s: float = 5.0, weight: Callable[[Any], int] | None = None):
        super().__init__()
        self.folder, self.name, self.every_s, self.weight = folder, name, every_s, weight

    def expand(self, pcoll: beam.PCollection) -> beam.PCollection:
        return pcoll | beam.ParDo(_CountFn(self.folder, self.name, self.every_s, self.weight))


def read_progress(folder: str) -> dict[str, int]:
    """The counts of every worker file in `folder`, summed (a file caught mid-replace is skipped this time)."""
    total: dict[str, int] = {}
    for name in fs.list_dir(folder):
        if not name.endswith(".json") or name.startswith("."):
            continue
        try:
            data = fs.read_json(fs.join(folder, name))
        except (OSError, ValueError):
            continue
        for k, v in data.items():
            total[k] = total.get(k, 0) + int(v)
    return total


def _secs(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def progress_line(counts: dict[str, int], elapsed: float, total: int | None = None, per_input: int = 1) -> str:
    """`inputs 120/400 (24.0/s), kept 80, rejected 30, 27% done, ETA 12s` (no total: no share and no ETA).
    `per_input` > 1: each input settles that many times (`polycap translate`: once per language), so kept and
    rejected are sums over the languages and the line says so."""
    inputs, kept, rejected = counts.get("inputs", 0), counts.get("kept", 0), counts.get("rejected", 0)
    rate = inputs / elapsed if elapsed > 0 else 0.0
    line = f"{_secs(elapsed)}: inputs {inputs}{f'/{total}' if total else ''} ({rate:.1f}/s), kept {kept}, " \
           f"rejected {rejected}" + (f" (summed over {per_input} languages)" if per_input > 1 else "")
    if total:
        if inputs < total:              # still reading: ETA of the reading stage at its rate so far
            if rate > 0:
                line += f", reading ETA {_secs((total - inputs) / rate)}"
        else:                           # every input read: ETA of the rest at the rate samples settle
            done = (kept + rejected) / max(per_input, 1)
            line += f", {min(100, int(100 * done // max(total, 1)))}% settled"
            if 0 < done < total:
                line += f", ETA {_secs((total - done) * elapsed / done)}"
    return line


class ProgressMonitor:
    """A launcher thread that prints `progress_line` every `every_s` seconds until `stop()` (which prints the
    last line from the final counts)."""

    def __init__(self, folder: str, every_s: float = 5.0, total: int | None = None, stream: IO[str] | None = None,
                 prefix: str = "[polycap] progress ", per_input: int = 1):
        self.folder, self.every_s, self.total, self.per_input = folder, every_s, total, per_input
        self.stream = stream or sys.stderr
        self.prefix = prefix
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.t0 = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last: dict[str, int] = {}

    def tick(self, final: bool = False) -> None:
        try:
            self.last = read_progress(self.folder)
        except Exception:  # noqa: BLE001 - a failed listing only skips one line
            return
        line = self.prefix + progress_line(self.last, time.monotonic() - self.t0, self.total, self.per_input)
        if self.tty:
            self.stream.write("\r\x1b[2K" + line + ("\n" if final else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            self.tick()

    def start(self) -> ProgressMonitor:
        if self.every_s > 0:
            self._thread = threading.Thread(target=self._loop, name="polycap-progress", daemon=True)
            self._thread.start()
        return self

    def stop(self, final_line: bool = True) -> dict[str, int]:
        """Stop printing; with `final_line`, flush this process's counts and print the last line."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if final_line and self.every_s > 0:
            flush_all()
            self.tick(final=True)
        return self.last


def count_dir_inputs(path: str, budget_s: float = 2.0, max_entries: int = 2_000_000) -> int | None:
    """How many inputs a local `dir` source holds (every file except .txt/.json sidecars), when that can be
    counted within `budget_s` seconds; None when it cannot (a URL, a glob, too many files)."""
    from polycap.transforms.ingest import SIDECAR_EXTS

    if "://" in path or any(c in path for c in "*?[") or not os.path.isdir(path):
        return None
    deadline, n, seen = time.monotonic() + budget_s, 0, 0
    stack = [path]
    while stack:
        try:
            with os.scandir(stack.pop()) as it:
                for e in it:
                    seen += 1
                    if seen > max_entries or time.monotonic() > deadline:
                        return None
                    if e.is_dir(follow_symlinks=False):
                        stack.append(e.path)
                    elif not e.name.lower().endswith(SIDECAR_EXTS):
                        n += 1
        except OSError:
            return None
    return n
