"""Recipes shipped with sparsify, one YAML file per recipe; `sparsify apply NAME` runs one by name."""
