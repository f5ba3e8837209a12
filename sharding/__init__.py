"""Webdataset shards: member layout, writer, reader, manifest, validator and stats."""
