"""Hostile inputs against ingest: each finishes in bounded time and memory, and is counted exactly once."""
