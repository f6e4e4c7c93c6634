"""Tiny Hugging Face models with random weights, written with save_pretrained (no downloads)."""

from __future__ import annotations

from pathlib import Path

import torch

# name -> (config class, config kwargs, model class, --hf-task)
TINY = {
    "bert": ("BertConfig", dict(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                intermediate_size=64, max_position_embeddings=40, type_vocab_size=2, num_labels=3),
             "BertForSequenceClassification", "sequence-classification"),
    "gpt2": ("GPT2Config", dict(vocab_size=96, n_embd=32, n_layer=2, n_head=4, n_positions=40, num_labels=3,
                                pad_token_id=0, bos_token_id=0, eos_token_id=0),
             "GPT2ForSequenceClassification", "sequence-classification"),
    "gpt2-lm": ("GPT2Config", dict(vocab_size=96, n_embd=32, n_layer=2, n_head=4, n_positions=40,
                                   bos_token_id=0, eos_token_id=0),
                "GPT2LMHeadModel", "causal-lm"),
    "vit": ("ViTConfig", dict(image_size=16, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2,
                              num_attention_heads=4, intermediate_size=64, num_labels=3),
            "ViTForImageClassification", "image-classification"),
    "distilbert": ("DistilBertConfig", dict(vocab_size=96, dim=32, n_layers=2, n_heads=4, hidden_dim=64,
                                            max_position_embeddings=40, num_labels=3),
                   "DistilBertForSequenceClassification", "sequence-classification"),
    "roberta": ("RobertaConfig", dict(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                      intermediate_size=64, max_position_embeddings=42, type_vocab_size=1,
                                      num_labels=3, pad_token_id=1),
                "RobertaForSequenceClassification", "sequence-classification"),
}


def save_tiny(name: str, dest: Path, attn: str = "sdpa", seed: int = 0) -> Path:
    """Build the tiny model `name` with seeded random weights (LayerNorms randomised too) and
    save_pretrained it (safetensors) into `dest`."""
    from sparsify.models.hub import import_transformers

    transformers = import_transformers()
    cfg_cls, kwargs, model_cls, _ = TINY[name]
    torch.manual_seed(seed)
    cfg = getattr(transformers, cfg_cls)(**kwargs)
    cfg._attn_implementation = attn
    model = getattr(transformers, model_cls)(cfg).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.bias.shape, generator=g) - 0.5)
    model.save_pretrained(str(dest), safe_serialization=True)
    return dest


def task(name: str) -> str:
    return TINY[name][3]
