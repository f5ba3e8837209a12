"""polycap: multilingual caption and instruction corpora for VLM training, on Apache Beam.

The subpackages live in the repository's top-level folders (`pipelines/`, `transforms/`, `schemas/`,
`sharding/`, `prompts/`, `trainer/`) and install under this one name: always import them as `polycap.<name>`.
"""
from __future__ import annotations

from importlib import metadata

try:
    __version__ = metadata.version("polycap")
except metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
