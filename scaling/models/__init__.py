"""The model family (NFNet; docs/references.md#nfnet-architecture-and-recipe).

jax-free on purpose: `config` and `counts` are pure Python for `analysis` and the
CLI. The Flax modules live in `scaling.models.nfnet` / `scaling.models.layers`;
import them explicitly where jax is wanted.
"""
from scaling.models.config import NFNetConfig, family_config, get_config, model_name
from scaling.models.counts import ModelCounts, count

__all__ = ["NFNetConfig", "ModelCounts", "count", "family_config", "get_config", "model_name"]
