"""Pipelines: the typer CLI and thin modules that wire stages together (config lives in schemas/config.py)."""
