"""The output lock (sharding/lock.py): one holder at a time, a refusal that names the holder, stale locks
reported with the way to clear them, removal at the end; `fs.create_new` on disk and on S3."""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import uuid

import pytest

from polycap.sharding import fs
from polycap.sharding.lock import LOCK_NAME, LockHeld, acquire, read_lock, stale_reason


def test_second_acquire_refuses_naming_the_holder_and_release_removes(tmp_path):
    first = acquire(str(tmp_path), "run1", split="train")
    with pytest.raises(LockHeld) as e:
        acquire(str(tmp_path), "run2", split="val")
    msg = str(e.value)
    assert "run run1" in msg and f"pid {os.getpid()}" in msg and socket.gethostname() in msg and "split train" in msg
    assert not e.value.stale
    first.release()
    assert not (tmp_path / LOCK_NAME).exists()
    acquire(str(tmp_path), "run2").release()          # free again


def test_release_leaves_another_runs_lock(tmp_path):
    mine = acquire(str(tmp_path), "run1")
    (tmp_path / LOCK_NAME).unlink()                   # someone deleted it by hand and another run took it
    other = acquire(str(tmp_path), "run2")
    mine.release()
    assert read_lock(str(tmp_path))["run_id"] == "run2"
    other.release()


def test_heartbeat_refreshes_the_lock(tmp_path):
    lock = acquire(str(tmp_path), "run1", heartbeat_s=0.05)
    first = read_lock(str(tmp_path))["heartbeat_unix"]
    with lock:
        deadline = time.time() + 10
        while read_lock(str(tmp_path))["heartbeat_unix"] == first and time.time() < deadline:
            time.sleep(0.05)
        assert read_lock(str(tmp_path))["heartbeat_unix"] > first
    assert read_lock(str(tmp_path)) is None


def _write_lock(path, **kw):
    rec = {"run_id": "old", "host": "elsewhere", "pid": 1, "split": "train", "started": "2020-01-01T00:00:00Z",
           "heartbeat": "2020-01-01T00:00:00Z", "heartbeat_unix": time.time(), **kw}
    (path / LOCK_NAME).write_text(json.dumps(rec))


def test_stale_by_heartbeat_is_reported_with_the_fix_and_broken_only_when_asked(tmp_path):
    _write_lock(tmp_path, heartbeat_unix=time.time() - 3600)
    with pytest.raises(LockHeld) as e:
        acquire(str(tmp_path), "new", stale_s=300)
    msg = str(e.value)
    assert "looks stale" in msg and re.search(r"no heartbeat for 36\d\d s", msg), msg
    assert "--break-lock" in msg and str(tmp_path / LOCK_NAME) in msg and "run old" in msg
    lock = acquire(str(tmp_path), "new", stale_s=300, break_stale=True)
    assert read_lock(str(tmp_path))["run_id"] == "new"
    lock.release()


def test_dead_pid_on_this_host_is_stale(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    _write_lock(tmp_path, host=socket.gethostname(), pid=proc.pid)
    with pytest.raises(LockHeld) as e:
        acquire(str(tmp_path), "new")
    assert f"process {proc.pid} is no longer running" in str(e.value)


def test_a_live_lock_is_never_broken(tmp_path):
    _write_lock(tmp_path, host=socket.gethostname(), pid=os.getpid())
    assert stale_reason(read_lock(str(tmp_path))) == ""
    with pytest.raises(LockHeld) as e:
        acquire(str(tmp_path), "new", break_stale=True)
    assert "in use by run old" in str(e.value)
    assert read_lock(str(tmp_path))["run_id"] == "old"


def test_unreadable_lock_is_stale(tmp_path):
    (tmp_path / LOCK_NAME).write_text("{not json")
    with pytest.raises(LockHeld) as e:
        acquire(str(tmp_path), "new")
    assert "unreadable" in str(e.value)


def test_create_new_local_is_exclusive(tmp_path):
    p = str(tmp_path / "sub" / "x.json")
    assert fs.create_new(p, b"a") is True
    assert fs.create_new(p, b"b") is False
    assert fs.read_bytes(p) == b"a"


def test_create_new_and_lock_on_s3(s3_server):
    out = s3_server.bucket(f"lock-{uuid.uuid4().hex[:8]}") + "/out"
    p = fs.join(out, "x.json")
    assert fs.create_new(p, b"a") is True            # a conditional PUT (If-None-Match: *)
    assert fs.create_new(p, b"b") is False
    assert fs.read_bytes(p) == b"a"
    q = fs.join(out, "y.json")                        # the server honours the condition: no fallback used
    assert fs._s3_put_if_absent(q, b"a") is True and fs._s3_put_if_absent(q, b"b") is False
    lock = acquire(out, "s3run")
    with pytest.raises(LockHeld, match="run s3run"):
        acquire(out, "other")
    lock.release()
    assert read_lock(out) is None
