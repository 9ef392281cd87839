"""Llama-style decoder with a pluggable positional scheme (TAPA, RoPE family, ALiBi, NoPE)."""

from tapa.model.cache import KVCache
from tapa.model.checkpoint import load_config, load_pretrained, save_pretrained
from tapa.model.config import ModelConfig
from tapa.model.transformer import TapaLM, sample_next

__all__ = ["KVCache", "ModelConfig", "TapaLM", "load_config", "load_pretrained", "sample_next", "save_pretrained"]
