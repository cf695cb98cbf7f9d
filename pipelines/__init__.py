"""Packaged pipelines, each a package exposing ``pipeline``, declared like a user's own."""
