"""The backend registry: config names a backend, code registers extra ones, handlers carry the class."""
from __future__ import annotations

import pickle

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to

from polycap.schemas.config import BUILTIN_BACKENDS, ConfigError, EndpointConfig, TranslateConfig, load_config
from polycap.transforms.backends import base
from polycap.transforms.backends.base import GenModelHandler, GenRequest, backend_class, register_backend
from polycap.transforms.translate import TextUnit, TranslateTexts
from tests.fakes.fake_translator import FAKE, FakeTranslatorBackend


def test_builtin_names_resolve_and_match_the_config_layer():
    assert set(BUILTIN_BACKENDS) <= set(base.REGISTRY)
    assert backend_class("openai").__name__ == "OpenAIBackend"
    assert backend_class(FAKE) is FakeTranslatorBackend


def test_unknown_or_none_backend_names_the_field():
    with pytest.raises(ConfigError, match=r"^caption\.backend: 'none' is not a registered backend"):
        backend_class("none", "caption.backend")
    with pytest.raises(ConfigError, match=r"^translate\.backend: 'none' is not a registered backend"):
        GenModelHandler(EndpointConfig("none"), where="translate.backend")   # fails on the launcher


@pytest.mark.parametrize("name", ["pkg.mod:Cls", "Fake", "openai", "none", ""])
def test_register_backend_refuses_paths_and_builtin_names(name):
    with pytest.raises(ValueError, match="register_backend"):
        register_backend(name, FakeTranslatorBackend)


def test_register_backend_refuses_a_second_class_under_one_name():
    class Other(FakeTranslatorBackend):
        pass

    register_backend(FAKE, FakeTranslatorBackend)            # the same class again: fine (module re-import)
    with pytest.raises(ValueError, match="already"):
        register_backend(FAKE, Other)


def test_config_accepts_registered_names_only():
    data = {"sources": [{"kind": "dir", "path": "x"}]}
    assert load_config(data=data, overrides=[f"translate.backend={FAKE}"]).translate.backend == FAKE
    with pytest.raises(ConfigError, match=r"^translate\.backend: 'fake-other'"):
        load_config(data=data, overrides=["translate.backend=fake-other"])


def test_pickled_handler_carries_the_class_not_the_registration(monkeypatch):
    """Workers unpickle the handler; they need the class's module, not a registry entry."""
    handler = GenModelHandler(EndpointConfig(FAKE, model="fake"))
    blob = pickle.dumps(handler)
    monkeypatch.delitem(base.REGISTRY, FAKE)
    model = pickle.loads(blob).load_model()
    req = GenRequest("k", [{"role": "system", "content": "Korean"}, {"role": "user", "content": "cat"}])
    assert isinstance(model, FakeTranslatorBackend) and model.generate([req])[0].text


def test_registered_backend_runs_in_multi_processing_direct_runner(tmp_path):
    cfg = TranslateConfig(backend=FAKE, model="fake", to=["ko"])
    opts = PipelineOptions(["--direct_running_mode=multi_processing", "--direct_num_workers=2"])
    with BeamTestPipeline(options=opts) as p:
        res = p | beam.Create([TextUnit("a", "A red cup."), TextUnit("b", "A blue cup.")]) | TranslateTexts(cfg)
        assert_that(res | beam.Map(lambda r: (r.key, r.lang, r.reason)), equal_to([("a", "ko", None),
                                                                                 ("b", "ko", None)]))


def test_the_model_stages_do_not_import_torch_through_beam():
    # Beam's ModelManager (torch + scipy, ~2 s and ~200 MB a worker) is only for use_model_manager=True
    import subprocess
    import sys

    code = ("import sys, polycap.transforms.translate, polycap.transforms.caption, apache_beam.ml.inference.base as b;"
            "print(sorted({'torch', 'scipy'} & set(sys.modules)), b.ModelManager)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["[]", "None"]
