"""Compiler passes: each plans first, then rewrites, and records why it skipped anything."""
