"""Shared fixtures: where the real evaluation data lives, and tiny sample builders."""
from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EVAL_DIR = Path(os.environ.get("POLYCAP_EVAL_DIR", REPO.parent / "shared" / "eval"))


@pytest.fixture(scope="session")
def eval_dir() -> Path:
    """`../shared/eval` (real photos, OCR pages, texts, shards). CI has it beside the clone."""
    if not EVAL_DIR.is_dir():
        raise RuntimeError(f"evaluation data not found at {EVAL_DIR}; set POLYCAP_EVAL_DIR")
    return EVAL_DIR


def jpeg_bytes(w: int = 128, h: int = 96, color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (w, h), color).save(buf, format="JPEG")
    return buf.getvalue()


def make_sample(data: bytes, uri: str = "mem://x", kind: str = "dir", name: str = "test", **source_kw):
    """A freshly ingested Sample (raw bytes, not yet decoded)."""
    from polycap.schemas import Hashes, ImageInfo, Sample, Source

    sha = hashlib.sha256(data).hexdigest()
    return Sample(key=sha[:32], source=Source(name=name, uri=uri, kind=kind, **source_kw),
                  image=ImageInfo(bytes=data), hashes=Hashes(sha256=sha))


class S3Server:
    """A real S3-protocol server (moto's) on 127.0.0.1, for tests that run the job against an object store."""

    def __init__(self, endpoint: str):
        self.endpoint = endpoint
        # Beam's S3 options, exactly what a user passes after `--` (tests pass the same list to every command)
        self.args = [f"--s3_endpoint_url={endpoint}", "--s3_access_key_id=testing",
                     "--s3_secret_access_key=testing", "--s3_region_name=us-east-1"]

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id="testing",
                            aws_secret_access_key="testing", region_name="us-east-1")

    def bucket(self, name: str) -> str:
        """A fresh bucket (names are >= 3 chars); returns `s3://name`."""
        self.client().create_bucket(Bucket=name)
        return f"s3://{name}"

    def keys(self, bucket: str, prefix: str = "") -> dict[str, int]:
        """key -> size of every object in `bucket` under `prefix`."""
        out: dict[str, int] = {}
        for page in self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            out.update({o["Key"]: o["Size"] for o in page.get("Contents", [])})
        return out

    def get(self, bucket: str, key: str) -> bytes:
        return self.client().get_object(Bucket=bucket, Key=key)["Body"].read()

    def put(self, bucket: str, key: str, data: bytes) -> None:
        self.client().put_object(Bucket=bucket, Key=key, Body=data)


@pytest.fixture(scope="session")
def _s3_server_process():
    """`python -m moto.server` on a free port of 127.0.0.1, started once per session and stopped after."""
    pytest.importorskip("moto.server", reason="install the dev extra (moto[server])")
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 30
        while True:
            try:
                urllib.request.urlopen(endpoint + "/moto-api/", timeout=2).close()
                break
            except OSError:
                if time.time() > deadline or proc.poll() is not None:
                    raise RuntimeError("moto server did not start") from None
                time.sleep(0.1)
        yield S3Server(endpoint)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture
def s3_server(_s3_server_process):
    """The session's S3 server, with this process's FileSystems configured for it. Per test, because every
    `beam.Pipeline(options)` resets FileSystems' options to its own (workers get theirs from the pipeline)."""
    from polycap.sharding import fs

    fs.configure(_s3_server_process.args)
    yield _s3_server_process
    fs.configure([])
