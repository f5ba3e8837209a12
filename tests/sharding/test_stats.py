"""Shard stats: counts, languages, sources and size quantiles, from the manifest or from the tars."""
from __future__ import annotations

import os
from collections import Counter

import numpy as np
import pytest

from polycap.sharding.stats import quantiles, shard_stats
from tests.sharding.conftest import run_write


@pytest.fixture(scope="module")
def stats_run(photo_samples, tmp_path_factory):
    out = tmp_path_factory.mktemp("stats") / "run"
    run_write(photo_samples, str(out), max_samples=5)
    return out


def test_quantiles_match_numpy_and_handle_empty():
    assert quantiles([]) == {}
    q = quantiles([1, 2, 3, 4, 100])
    assert q["p0"] == 1 and q["p50"] == 3 and q["p100"] == 100 and q["mean"] == 22
    assert q["p95"] == pytest.approx(np.quantile([1, 2, 3, 4, 100], 0.95))


def test_stats_from_manifest_describe_the_samples(stats_run, photo_samples):
    st = shard_stats(str(stats_run))
    tars = [f for f in os.listdir(stats_run / "shards") if f.endswith(".tar")]
    assert st["from"] == "manifest" and st["samples"] == 12 and st["shards"] == len(tars)
    assert st["bytes"] == sum(os.path.getsize(stats_run / "shards" / f) for f in tars)
    assert st["splits"] == {"train": 12} and st["samples_per_shard"]["p100"] <= 5
    langs = Counter(lang for s in photo_samples for lang in s.captions)
    assert st["languages"] == dict(langs)
    assert st["sources"] == {"img2dataset": 6, "skimage": 6}
    widths = [s.image.width for s in photo_samples]
    assert st["width"]["p0"] == min(widths) and st["width"]["p50"] == pytest.approx(np.median(widths))
    assert st["height"]["p100"] == max(s.image.height for s in photo_samples)


def test_stats_without_manifest_read_the_tars_and_agree(stats_run, tmp_path):
    import shutil

    shutil.copytree(stats_run / "shards", tmp_path / "shards_only")
    a, b = shard_stats(str(stats_run)), shard_stats(str(tmp_path / "shards_only"))
    assert b["from"] == "tars"
    for k in ("samples", "shards", "bytes", "splits", "languages", "sources", "width", "height",
              "samples_per_shard"):
        assert a[k] == b[k], k


def test_stats_of_an_empty_run(tmp_path):
    run_write([], str(tmp_path / "run"))
    st = shard_stats(str(tmp_path / "run"))
    assert (st["samples"], st["shards"], st["bytes"], st["languages"], st["width"]) == (0, 0, 0, {}, {})
