"""One run at a time per output folder: `<output>/_lock.json`, created atomically, refreshed while the job runs.

Two runs into one output would interleave their shard commits and rewrite each other's manifest, so a run
takes the lock before it writes anything (even `_run.json`) and removes it when it ends, failed or not. The
lock is created through the filesystem layer (`fs.create_new`: O_EXCL on a disk, a conditional PUT on S3, a
best-effort check-write-read-back elsewhere) and holds run id, host, pid, start time and a heartbeat that
the launcher rewrites every `HEARTBEAT_S` seconds. A lock whose heartbeat is older than `STALE_S`, or whose
pid is gone on this same host, is stale: the run still refuses, names the holder and says how to clear it
(`--break-lock` removes a stale lock; a live one is never broken by the tool).
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

from polycap.schemas.records import now_iso
from polycap.sharding import fs

LOCK_NAME = "_lock.json"
HEARTBEAT_S = 30.0
STALE_S = 300.0       # ten missed heartbeats


class LockHeld(RuntimeError):
    """The output is locked by another run (live or stale); the message names the holder and the fix."""

    def __init__(self, message: str, holder: dict[str, Any], stale: str):
        super().__init__(message)
        self.holder, self.stale = holder, stale


def lock_path(output_dir: str) -> str:
    return fs.join(fs.abs_path(output_dir), LOCK_NAME)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def stale_reason(holder: dict[str, Any], stale_s: float = STALE_S, now: float | None = None) -> str:
    """Why a lock is stale ("" when it looks alive): its heartbeat is old, or its pid is gone on this host."""
    now = time.time() if now is None else now
    beat = holder.get("heartbeat_unix")
    if isinstance(beat, (int, float)) and now - beat > stale_s:
        return f"no heartbeat for {int(now - beat)} s (stale after {int(stale_s)} s)"
    if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int) \
            and not _pid_alive(holder["pid"]):
        return f"process {holder['pid']} is no longer running on {holder['host']}"
    if not isinstance(beat, (int, float)):
        return "the lock file is unreadable or has no heartbeat"
    return ""


def read_lock(output_dir: str) -> dict[str, Any] | None:
    """The holder's record, {} when the file exists but does not parse, None when there is no lock."""
    path = lock_path(output_dir)
    try:
        data = fs.read_json(path)
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {} if fs.exists(path) else None
    return data if isinstance(data, dict) else {}


def describe(holder: dict[str, Any]) -> str:
    if not holder:
        return "an unknown run (unreadable lock file)"
    return (f"run {holder.get('run_id', '?')} (host {holder.get('host', '?')}, pid {holder.get('pid', '?')}, "
            f"split {holder.get('split', '?')}, started {holder.get('started', '?')}, "
            f"last heartbeat {holder.get('heartbeat', '?')})")


@dataclass
class RunLock:
    """A held lock; `start_heartbeat()` refreshes it from a daemon thread, `release()` removes it."""

    output_dir: str
    record: dict[str, Any]
    heartbeat_s: float = HEARTBEAT_S

    def __post_init__(self) -> None:
        self.path = lock_path(self.output_dir)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def beat(self) -> None:
        self.record = {**self.record, "heartbeat": now_iso(), "heartbeat_unix": time.time()}
        if (read_lock(self.output_dir) or {}).get("run_id") == self.record["run_id"]:   # never overwrite another's
            fs.write_json(self.path, self.record)

    def _loop(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                self.beat()
            except Exception:  # noqa: BLE001, S110 - a missed beat only ages the lock; the run goes on
                pass

    def start_heartbeat(self) -> RunLock:
        self._thread = threading.Thread(target=self._loop, name="polycap-lock-heartbeat", daemon=True)
        self._thread.start()
        return self

    def release(self) -> None:
        """Stop the heartbeat and remove the lock if it is still this run's."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if (read_lock(self.output_dir) or {}).get("run_id") == self.record["run_id"]:
            fs.delete([self.path])

    def __enter__(self) -> RunLock:
        return self.start_heartbeat()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def acquire(output_dir: str, run_id: str | None = None, split: str = "", break_stale: bool = False,
            heartbeat_s: float = HEARTBEAT_S, stale_s: float = STALE_S) -> RunLock:
    """Take the output's lock or raise LockHeld naming the holder (and, for a stale lock, how to clear it)."""
    now = time.time()
    record = {"run_id": run_id or uuid.uuid4().hex[:12], "host": socket.gethostname(), "pid": os.getpid(),
              "split": split, "started": now_iso(), "heartbeat": now_iso(), "heartbeat_unix": now,
              "heartbeat_s": heartbeat_s}
    data = (json.dumps(record, indent=2, sort_keys=True) + "\n").encode()
    path = lock_path(output_dir)
    for _ in range(2):                       # a second try only after breaking a stale lock
        if fs.create_new(path, data):
            return RunLock(output_dir, record, heartbeat_s)
        holder = read_lock(output_dir)
        if holder is None:                   # released between our create and read: try again
            continue
        stale = stale_reason(holder, stale_s)
        if stale and break_stale:
            fs.delete([path])
            continue
        if stale:
            raise LockHeld(f"output {output_dir} is locked by {describe(holder)}, which looks stale: {stale}. "
                           f"If no run is writing there, rerun with --break-lock (removes a stale lock) or delete "
                           f"{path}", holder, stale)
        raise LockHeld(f"output {output_dir} is in use by {describe(holder)}; two runs into one output would "
                       f"overwrite each other's shards and manifest. Wait for it to finish or choose another "
                       f"output (if you are sure it is dead, delete {path})", holder, stale)
    raise LockHeld(f"output {output_dir}: could not take {path} (another run keeps taking it)", {}, "")
