"""Config loading: defaults, overrides, and errors that name the bad field before any work starts."""
import pytest

from polycap.schemas.config import ConfigError, TranslateConfig, load_config, load_section

BASE = {"sources": [{"kind": "dir", "path": "/tmp/x", "name": "x"}], "output": "out/t"}


def test_defaults_and_sections():
    cfg = load_config(data=BASE)
    assert cfg.filter.min_side == 64 and cfg.dedup.near is True and cfg.shards.split == "train"
    assert cfg.sources[0].kind == "dir"


def test_set_overrides_parse_yaml_values():
    cfg = load_config(data=BASE, overrides=["filter.min_side=128", "dedup.near=false", "translate.to=[ko]"])
    assert cfg.filter.min_side == 128 and cfg.dedup.near is False and cfg.translate.to == ["ko"]


@pytest.mark.parametrize("override,field", [
    ("filter.min_side=abc", "filter.min_side"),
    ("filter.min_sid=3", "filter.min_sid"),
    ("dedup.near=maybe", "dedup.near"),
    ("filter.max_aspect=0.5", "filter.max_aspect"),
    ("shards.max_samples=0", "shards.max_samples"),
    ("caption.backend=gpt", "caption.backend"),
    ("shards.split=a.b", "shards.split"),
])
def test_bad_values_name_the_field(override, field):
    with pytest.raises(ConfigError) as e:
        load_config(data=BASE, overrides=[override])
    assert str(e.value).startswith(field)


def test_bad_source_kind_and_missing_sources():
    with pytest.raises(ConfigError, match=r"sources\[0\]\.kind"):
        load_config(data={"sources": [{"kind": "ftp", "path": "x"}]})
    with pytest.raises(ConfigError, match="sources"):
        load_config(data={"output": "x"})


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("sources: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_load_section_cli_override_wins(tmp_path):
    f = tmp_path / "t.yaml"
    f.write_text("translate:\n  to: [vi]\n  model: m\n")
    t = load_section(TranslateConfig, "translate", str(f), ["to=[ko]", "translate.batch_size=4"])
    assert t.to == ["ko"] and t.model == "m" and t.batch_size == 4
    with pytest.raises(ConfigError, match="translate.bogus"):
        load_section(TranslateConfig, "translate", None, ["bogus=1"])


@pytest.mark.parametrize("bad", [-1, 257])
def test_decode_threads_is_validated(bad):
    with pytest.raises(ConfigError, match="decode.threads"):
        load_config(data={"sources": [{"kind": "dir", "path": "x"}], "decode": {"threads": bad}})
    assert load_config(data={"sources": [{"kind": "dir", "path": "x"}]}).decode.threads == 0  # auto
