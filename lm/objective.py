"""The causal-LM objective on packed rows: each token predicts the next one of its own document."""

from typing import Any

import jax
import jax.numpy as jnp
import optax

from lm.model import TransformerLM


def token_nll(model: TransformerLM, params: Any, batch: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per-token negative log-likelihood [B, T], its mask [B, T] and the targets [B, T].

    Rows in `batch` hold T + 1 tokens: inputs are the first T, targets the last T. A target counts only if
    it continues the document of its input (same segment, not padding).
    """
    tokens, segments, positions = batch["tokens"], batch["segment_ids"], batch["positions"]
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    mask = (segments[:, 1:] == segments[:, :-1]) & (segments[:, 1:] > 0)
    logits = model.apply({"params": params}, inputs, positions[:, :-1], segments[:, :-1])  # [B, T, V] float32
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    return nll, mask.astype(jnp.float32), targets


def mean_loss(model: TransformerLM, params: Any, batch: dict[str, jax.Array]) -> jax.Array:
    """Mean next-token loss over the batch's counted targets."""
    nll, mask, _ = token_nll(model, params, batch)
    return (nll * mask).sum() / jnp.maximum(mask.sum(), 1.0)
