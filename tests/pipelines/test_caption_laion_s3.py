"""configs/caption-laion.yaml as shipped, end to end on a local S3-protocol server: a parquet URL list on S3
pointing at a local image server, caption and translate on a fake OpenAI-protocol server (backend
overridden to `openai`: vLLM is not installable here; the workers' model check passes against it), OCR on
CPU, and a launcher in an empty scratch folder that writes nothing to its own disk."""
from __future__ import annotations

import io
import json
import os
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from polycap.sharding import fs
from tests.fakes.fake_translator import fake_translate, target_of
from tests.fakes.openai_server import FakeOpenAIServer, default_caption
from tests.pipelines.test_s3 import MP, PHOTOS, _leftovers, _polycap, _s3_objects
from tests.transforms.image_server import ImageServer

REPO = Path(__file__).resolve().parents[2]


def _answer(body: dict) -> str:
    """A caption for a request with an image, a fake translation (made-up ko/vi words) for a text one."""
    msgs = body.get("messages", [])
    if any(isinstance(m.get("content"), list) and any(p.get("type") == "image_url" for p in m["content"])
           for m in msgs):
        return default_caption(body)
    system = next((m["content"] for m in msgs if m.get("role") == "system"), "")
    text = next((m["content"] for m in msgs if m.get("role") == "user"), "")
    return fake_translate(text if isinstance(text, str) else "", target_of(system))


@pytest.mark.slow
def test_caption_laion_config_on_s3_with_url_lists(_s3_server_process, s3_server, eval_dir, tmp_path):
    s3 = _s3_server_process
    bucket = f"laion-{uuid.uuid4().hex[:8]}"
    s3.bucket(bucket)
    photos = eval_dir / "photos" / "skimage"
    with ImageServer({"img": photos}) as images, FakeOpenAIServer(responder=_answer, model="fake-vlm") as llm:
        rows = [{"URL": images.url(f"img/{name}"), "TEXT": f"A photograph of {name.split('.')[0]} on a plain table.",
                 "width": 512} for name in PHOTOS]
        rows.append({"URL": images.url("img/missing.jpg"), "TEXT": "An image that is not there at all.",
                     "width": 0})
        half = len(rows) // 2
        for i, part in enumerate((rows[:half], rows[half:])):   # two list files: each parsed on its own
            buf = io.BytesIO()
            pq.write_table(pa.Table.from_pylist(part), buf)
            s3.put(bucket, f"laion/part-{i:05d}.parquet", buf.getvalue())
        cwd = tmp_path / "cwd"
        cwd.mkdir()
        src = (f"[{{kind: urls, path: 's3://{bucket}/laion/part-*.parquet', name: laion, url_col: URL, "
               f"caption_col: TEXT}}]")
        sets = [f"sources={src}", "ingest.allow_private_addresses=true",
                "caption.backend=openai", f"caption.endpoint={llm.url}", "caption.model=fake-vlm",
                "caption.batch_size=4", f"translate.endpoint={llm.url}", "translate.model=fake-vlm",
                "ocr.device=cpu", "shards.max_samples=4"]
        res = _polycap(["run", str(REPO / "configs" / "caption-laion.yaml"), "--output", f"s3://{bucket}/out",
                        *[a for s in sets for a in ("--set", s)], "--", *s3.args, *MP], cwd)
        assert res.returncode == 0, res.stderr[-4000:]
        assert llm.requests > 0
    assert os.listdir(cwd) == []                                   # nothing on the launcher's disk
    assert "NOT RUN" not in res.stdout + res.stderr
    stats = json.loads(s3.get(bucket, "out/_stats/train.json"))
    assert stats["balanced"] and stats["inputs"] == len(rows), stats
    assert stats["kept"] >= len(PHOTOS) - 2 and stats["rejected_by_reason"].get("download_failed") == 1, stats
    assert stats["kept_by_language"].get("en") == stats["kept"], stats
    assert stats["kept_by_language"].get("ko") and stats["kept_by_language"].get("vi"), stats
    out = f"s3://{bucket}/out"
    manifest = fs.read_parquet(fs.join(out, "manifest.parquet"))
    assert manifest.num_rows == stats["kept"]
    objects = _s3_objects(s3, bucket, "out/")
    assert _leftovers(objects) == []
    from polycap.sharding.validate import validate_dir

    report = validate_dir(out)
    assert report.ok and report.samples == stats["kept"], report.errors
    run = json.loads(s3.get(bucket, "out/_run.json"))
    assert run["config"]["caption"]["backend"] == "openai" and run["config"]["ocr"]["enabled"]
