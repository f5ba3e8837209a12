"""Pipeline stages: one module per stage (pure functions, a thin DoFn, one public PTransform)."""
import sys

# Beam's RunInference module imports its GPU ModelManager, and with it torch and scipy (~2 s of CPU and ~200 MB
# per worker process), only to serve RunInference(use_model_manager=True), which polycap never asks for.
# Unless something imported it already, mark it absent: apache_beam.ml.inference.base then takes its own
# ImportError fallback (ModelManager = None) and everything else in RunInference is unchanged.
_MODEL_MANAGER = "apache_beam.ml.inference.model_manager"
if _MODEL_MANAGER not in sys.modules and "apache_beam.ml.inference.base" not in sys.modules:
    sys.modules[_MODEL_MANAGER] = None  # type: ignore[assignment]
