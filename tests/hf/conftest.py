"""Tiny Hugging Face models saved with save_pretrained into a temp directory (no downloads)."""

from __future__ import annotations

import numpy as np
import pytest

from sparsify.errors import ModelError


def _transformers():
    from sparsify.models.hub import import_transformers

    try:
        return import_transformers()
    except ModelError as exc:
        pytest.skip(f"transformers is not installed (the [hf] extra): {exc}")


@pytest.fixture(scope="session")
def hf_dirs(tmp_path_factory):
    """name -> directory of a saved tiny model (sdpa attention), built on first use."""
    _transformers()
    from tests.hf.tiny import save_tiny

    root = tmp_path_factory.mktemp("hf")
    cache: dict[str, object] = {}

    def get(name: str, attn: str = "sdpa"):
        key = f"{name}-{attn}"
        if key not in cache:
            cache[key] = save_tiny(name, root / key, attn)
        return cache[key]
    return get


def text_data(path, n: int = 48, seq: int = 16, vocab: int = 96, token_types: bool = False, seed: int = 0):
    """An .npz data set with one array per named input and labels y (3 classes)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(2, vocab, size=(n, seq), dtype=np.int64)
    lengths = rng.integers(seq // 2, seq + 1, size=(n, 1))
    mask = (np.arange(seq)[None, :] < lengths).astype(np.int64)
    arrays = {"input_ids": ids, "attention_mask": mask, "y": (ids[:, 0] % 3).astype(np.int64)}
    if token_types:
        arrays["token_type_ids"] = (np.arange(seq)[None, :] >= seq // 2).astype(np.int64).repeat(n, 0)
    np.savez(path, **arrays)
    return path


def image_data(path, n: int = 48, size: int = 16, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 3, size, size)).astype(np.float32)
    np.savez(path, pixel_values=x, y=(x[:, 0, 0, 0] > 0).astype(np.int64))
    return path
