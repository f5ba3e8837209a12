"""`polycap init`'s core: the bundled configs are package data, and the starter loads as it is."""
from __future__ import annotations

import pytest
import yaml

from polycap.pipelines.starter import bundled_configs, config_text, write_config
from polycap.schemas.config import load_config


def test_write_config_writes_a_starter_that_loads(tmp_path):
    dest = write_config(str(tmp_path / "sub" / "polycap.yaml"))
    cfg = load_config(dest)
    assert cfg.sources[0].kind == "dir" and cfg.output == "out/run"


def test_an_existing_file_is_kept(tmp_path):
    dest = tmp_path / "polycap.yaml"
    dest.write_text("mine\n")
    with pytest.raises(FileExistsError, match="--force"):
        write_config(str(dest))
    assert dest.read_text() == "mine\n"
    write_config(str(dest), force=True)
    assert dest.read_text() == config_text("starter")


def test_unknown_example_names_the_bundled_ones():
    with pytest.raises(KeyError, match="starter"):
        config_text("nope")


def test_every_bundled_job_config_loads(tmp_path):
    """Job configs (those with `sources:`) pass validation; trainer and translate ones are other commands'."""
    names = bundled_configs()
    assert {"starter", "demo", "train-tiny", "caption-laion", "translate-llava-ko"} <= set(names)
    jobs = [n for n in names if "sources" in (yaml.safe_load(config_text(n)) or {})]
    assert "starter" in jobs and "demo" in jobs
    for name in jobs:
        (tmp_path / f"{name}.yaml").write_text(config_text(name))
        assert load_config(tmp_path / f"{name}.yaml").sources, name
