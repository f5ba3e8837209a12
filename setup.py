"""Shim for Beam's `--setup_file ./setup.py` (workers install polycap from pyproject.toml)."""
from setuptools import setup

setup()
