"""Pipelines: the typer CLI, config loading, and thin modules that wire stages together."""
