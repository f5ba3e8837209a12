"""Images whose data stops early but whose container looks whole: a JPEG cut short with a new end-of-image
marker (baseline: grey lower part; progressive: blur) is a reject, never a kept sample."""
from __future__ import annotations

import io

import pytest
from PIL import Image

from tests.hostile.helpers import run_job


def _jpeg(im: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=90, **kw)
    return buf.getvalue()


@pytest.mark.timeout(120)
def test_jpeg_cut_with_end_marker_appended_is_rejected(tmp_path, eval_dir):
    photo = Image.open(eval_dir / "photos/sklearn/china.jpg").convert("RGB")
    src = tmp_path / "in"
    src.mkdir()
    whole = _jpeg(photo)
    (src / "whole.jpg").write_bytes(whole)
    (src / "half_baseline.jpg").write_bytes(whole[: len(whole) // 2] + b"\xff\xd9")
    prog = _jpeg(photo.rotate(180), progressive=True)
    (src / "half_progressive.jpg").write_bytes(prog[: len(prog) // 2] + b"\xff\xd9")
    (src / "no_end.jpg").write_bytes(whole[: len(whole) * 3 // 4])           # plainly truncated
    r = run_job(tmp_path, [{"kind": "dir", "path": str(src), "name": "t"}], timeout=110)
    assert r["rc"] == 0, r["stderr"]
    assert (r["inputs"], r["kept"], r["rejected"]) == (4, 1, 3)
    reasons = {row["source_uri"].rsplit("/", 1)[-1]: (row["reason"], row["detail"]) for row in r["rejects"]}
    assert set(reasons) == {"half_baseline.jpg", "half_progressive.jpg", "no_end.jpg"}
    for name, (reason, detail) in reasons.items():
        assert reason == "corrupt_image" and "truncated" in detail, (name, detail)
    assert r["written_outside"] == []
