"""The causal-LM objective on packed rows: each token predicts the next one of its own document."""

from typing import Any

import jax
import jax.numpy as jnp

from lm.model.transformer import TransformerLM


def counted(batch: dict[str, jax.Array]) -> jax.Array:
    """[B, T] float32: 1 where a target counts. Rows in `batch` hold T + 1 tokens (inputs the first T, targets
    the last T); a target counts if it continues the document of its input (same segment, not padding) and, if
    the batch has a `loss_mask`, where that is 1 (0 over prompts, for supervised fine-tuning)."""
    segments = batch["segment_ids"]
    mask = (segments[:, 1:] == segments[:, :-1]) & (segments[:, 1:] > 0)
    if "loss_mask" in batch:
        mask &= batch["loss_mask"][:, 1:] > 0
    return mask.astype(jnp.float32)


def token_nll(model: TransformerLM, params: Any, batch: dict[str, jax.Array]) -> tuple[jax.Array, ...]:
    """Per-token negative log-likelihood [B, T], log-normalizer log Z [B, T], `counted` mask [B, T] and targets
    [B, T], all in float32."""
    tokens, segments, positions = batch["tokens"], batch["segment_ids"], batch["positions"]
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    logits = model.apply({"params": params}, inputs, positions[:, :-1], segments[:, :-1],
                         padded_vocab=True)  # [B, T, V'] float32, the padding columns at -1e30
    log_z = jax.nn.logsumexp(logits, axis=-1)
    # The target's logit picked by a compare, not a gather: its gradient joins the softmax's in one pass (a
    # gather's is a scatter over [B, T, V']).
    picked = jnp.where(jnp.arange(logits.shape[-1]) == targets[..., None], logits, 0.0).sum(axis=-1)
    return log_z - picked, log_z, counted(batch), targets


def summed_loss(model: TransformerLM, params: Any, batch: dict[str, jax.Array],
                z_loss: float = 0.0) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    """(sum of next-token losses plus z_loss * log(Z)^2 over counted targets, (sum of the losses alone, count))."""
    nll, log_z, mask, _ = token_nll(model, params, batch)
    nll_sum = (nll * mask).sum()
    return nll_sum + z_loss * (jnp.square(log_z) * mask).sum(), (nll_sum, mask.sum())


def mean_loss(model: TransformerLM, params: Any, batch: dict[str, jax.Array]) -> jax.Array:
    """Mean next-token loss over the batch's counted targets."""
    _, (nll_sum, count) = summed_loss(model, params, batch)
    return nll_sum / jnp.maximum(count, 1.0)
