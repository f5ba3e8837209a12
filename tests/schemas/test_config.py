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
    ("filter.max_aspect=.nan", "filter.max_aspect"),
    ("filter.max_aspect=.inf", "filter.max_aspect"),
    ("filter.min_bytes=-1", "filter.min_bytes"),
    ("shards.max_samples=0", "shards.max_samples"),
    ("shards.split=a.b", "shards.split"),
    ("shards.split='val set'", "shards.split"),
    ("shards.split=Train", "shards.split"),
    ("shards.split=''", "shards.split"),
    ("caption.backend=gpt", "caption.backend"),
    ("caption.backend='os:system'", "caption.backend"),
    ("caption.routes={x: bogus}", "caption.routes.x"),
    ("caption.skip_gates=[langauge]", "caption.skip_gates[0]"),
    ("caption.temperature=-.inf", "caption.temperature"),
    ("caption.text_rich_min_area=0.5", "caption.text_rich_min_area"),
    ("caption.concurrency=0", "caption.concurrency"),
    ("caption.endpoint=localhost:8000", "caption.endpoint"),
    ("caption.api_key_env=sk-live-123", "caption.api_key_env"),
    ("translate.prompt_style=weird", "translate.prompt_style"),
    ("translate.to=['../x']", "translate.to[0]"),
    ("translate.to=[ko, 'ko/../../etc']", "translate.to[1]"),
    ("translate.to=[ko, ko]", "translate.to"),
    ("translate={enabled: true, to: []}", "translate.to"),
    ("translate.backend='tests.fakes.fake_translator:FakeTranslatorBackend'", "translate.backend"),
    ("translate.timeout_s=0", "translate.timeout_s"),
    ("translate.max_retries=-1", "translate.max_retries"),
    ("translate.max_chunk_chars=0", "translate.max_chunk_chars"),
    ("ocr.engine=tensorrt", "ocr.engine"),
    ("ocr.backend=tesseract", "ocr.backend"),
    ("ocr.on_failure=drop", "ocr.on_failure"),
    ("ocr.min_score=1.5", "ocr.min_score"),
    ("ocr.det_thresh=.nan", "ocr.det_thresh"),
    ("ocr={backend: rapidocr, device: 'gpu:0'}", "ocr.device"),
    ("ingest.timeout_s=-5", "ingest.timeout_s"),
    ("ingest.retries=-1", "ingest.retries"),
    ("decode.jpeg_quality=101", "decode.jpeg_quality"),
    ("decode.max_side=-1", "decode.max_side"),
    ("dedup.max_hamming=33", "dedup.max_hamming"),
    ("dedup.max_key_items=8", "dedup.max_key_items"),
    ("sources=[{kind: ftp, path: x}]", "sources[0].kind"),
    ("sources=[{kind: dir, path: ''}]", "sources[0].path"),
    ("filter.min_side=[", "filter.min_side"),          # not YAML
])
def test_bad_values_name_the_field(override, field):
    """Each bad value is refused at load, in one line that starts with the field path."""
    with pytest.raises(ConfigError) as e:
        load_config(data=BASE, overrides=[override])
    msg = str(e.value)
    assert msg.startswith(f"{field}:") and "\n" not in msg, msg
    assert "sk-live-123" not in msg          # an API key pasted into api_key_env is never echoed


def test_sections_check_themselves_when_built_in_code():
    from polycap.schemas.config import FilterConfig, ShardsConfig

    with pytest.raises(ConfigError, match=r"^max_aspect: must be a finite number"):
        FilterConfig(max_aspect=float("nan"))
    with pytest.raises(ConfigError, match=r"^prompt_style: 'weird' is not one of auto, chat, completion"):
        TranslateConfig(prompt_style="weird")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"^split:"):
        ShardsConfig(split="val set")


def test_caption_and_translate_share_one_endpoint_section():
    from polycap.schemas.config import CaptionConfig, EndpointConfig, endpoint_of

    cfg = load_config(data={**BASE, "caption": {"backend": "vllm", "model": "m", "device": "cuda:0"},
                            "translate": {"endpoint": "http://t:8000/v1", "concurrency": 3}})
    assert isinstance(cfg.caption, EndpointConfig) and isinstance(cfg.translate, EndpointConfig)
    spec = endpoint_of(cfg.caption)
    assert type(spec) is EndpointConfig and (spec.backend, spec.model, spec.device) == ("vllm", "m", "cuda:0")
    assert endpoint_of(cfg.translate).endpoint == "http://t:8000/v1" and endpoint_of(cfg.translate).concurrency == 3
    assert endpoint_of(CaptionConfig(model="a"), model="b").model == "b"


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
    with pytest.raises(ConfigError, match=r"bad\.yaml: not valid YAML: line 2, column 1: ") as e:
        load_config(bad)
    assert "\n" not in str(e.value)


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
