"""Capture of a model and the dependency graph of its coupled channels."""
