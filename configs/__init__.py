"""Bundled example job configs (`*.yaml`), installed as package data: `polycap init` copies one out."""
