"""`python -m lm.sample --workdir DIR --prompt "ROMEO:"`: text from a checkpoint, with a KV cache.

The model is rebuilt from the workdir alone (config and tokenizer travel in the checkpoint) and only its
parameters are restored. Generation prefills the prompt in one call, then decodes one token per step inside
one jitted loop. When the cache is full, the newest half of the context is prefilled again, so samples can be
longer than the context. Temperature 0 is greedy; the same seed gives the same text.
"""

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from lm import cli
from lm import sharding as shd
from lm import state as state_lib
from lm.checkpoint import open_run, require_tokenizer
from lm.model import Cache, TransformerLM, init_cache

# (params, tokens [B, T], positions [B, T], segment_ids [B, T], cache) -> (logits [B, T, V], cache)
ApplyFn = Callable[[Any, jax.Array, jax.Array, jax.Array, Cache], tuple[jax.Array, Cache]]


def filter_logits(logits: jax.Array, temperature: jax.Array, top_k: jax.Array, top_p: jax.Array) -> jax.Array:
    """logits [B, V] scaled by 1/temperature, -inf outside the top_k (0: all) and the top_p nucleus (1: all)."""
    logits = logits.astype(jnp.float32) / jnp.maximum(temperature, 1e-6)
    ranked = jnp.sort(logits, axis=-1)[:, ::-1]  # [B, V], descending
    v = logits.shape[-1]
    k = jnp.where((top_k > 0) & (top_k < v), top_k, v)
    kth = jnp.take(ranked, k - 1, axis=-1)[:, None]  # [B, 1]
    probs = jax.nn.softmax(jnp.where(ranked >= kth, ranked, -jnp.inf), axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs  # probability mass ranked strictly above each token
    keep = (before < top_p) & (ranked >= kth)  # the smallest prefix reaching top_p (always >= 1 token)
    cutoff = jnp.min(jnp.where(keep, ranked, jnp.inf), axis=-1, keepdims=True)
    return jnp.where(logits >= cutoff, logits, -jnp.inf)


def sample_token(
    logits: jax.Array, key: jax.Array, temperature: jax.Array, top_k: jax.Array, top_p: jax.Array
) -> jax.Array:
    """One token per row of logits [B, V]: argmax if temperature is 0, else a draw from the filtered softmax."""
    drawn = jax.random.categorical(key, filter_logits(logits, temperature, top_k, top_p), axis=-1)
    return jnp.where(temperature > 0, drawn, jnp.argmax(logits, axis=-1)).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("apply_fn", "max_new_tokens"))
def generate(
    apply_fn: ApplyFn, params: Any, cache: Cache, prompt: jax.Array, key: jax.Array, max_new_tokens: int,
    temperature: float | jax.Array = 1.0, top_k: int | jax.Array = 0, top_p: float | jax.Array = 1.0,
) -> jax.Array:
    """[B, max_new_tokens] tokens continuing prompt [B, P] (P <= the cache length)."""
    b, p = prompt.shape
    slots = cache["segment_ids"].shape[1]
    window = max(min(slots // 2, p + max_new_tokens), 1)  # context kept when the cache is full
    ones = lambda t: jnp.ones((b, t), jnp.int32)  # noqa: E731  (one document per row)
    arange = lambda t: jnp.broadcast_to(jnp.arange(t), (b, t))  # noqa: E731
    empty = jax.tree.map(jnp.zeros_like, cache)
    logits, cache = apply_fn(params, prompt, arange(p), ones(p), cache)
    buf = jnp.zeros((b, p + max_new_tokens), jnp.int32).at[:, :p].set(prompt)

    def body(i, carry):
        buf, last, cache = carry
        token = sample_token(last, jax.random.fold_in(key, i), temperature, top_k, top_p)  # [B]
        buf = buf.at[:, p + i].set(token)

        def extend(cache: Cache) -> tuple[jax.Array, Cache]:
            pos = jnp.full((b, 1), cache["index"])
            out, cache = apply_fn(params, token[:, None], pos, ones(1), cache)
            return out[:, -1], cache

        def refill(cache: Cache) -> tuple[jax.Array, Cache]:
            recent = jax.lax.dynamic_slice_in_dim(buf, p + i + 1 - window, window, axis=1)
            out, cache = apply_fn(params, recent, arange(window), ones(window), empty)
            return out[:, -1], cache

        return (buf, *jax.lax.cond(cache["index"] >= slots, refill, extend, cache))

    buf, _, _ = jax.lax.fori_loop(0, max_new_tokens, body, (buf, logits[:, -1], cache))
    return buf[:, p:]


def model_apply(model: TransformerLM) -> ApplyFn:
    """The model's cached forward pass in the form `generate` takes (make it once: jit caches on it)."""

    def apply(params: Any, tokens: jax.Array, positions: jax.Array, segment_ids: jax.Array, cache: Cache):
        return model.apply({"params": params}, tokens, positions, segment_ids, cache)

    return apply


def main(argv: Sequence[str]) -> None:
    del argv
    f = flags.FLAGS
    ckpt, step, model_config, tokenizer, _ = open_run(f.workdir, f.step)
    tokenizer = require_tokenizer(tokenizer, f.workdir)
    prompt = [tokenizer.bos_id, *tokenizer.encode(f.prompt)]
    if len(prompt) > model_config.max_len:
        raise cli.UserError(f"the prompt is {len(prompt)} tokens (with BOS) but the model's context is "
                            f"{model_config.max_len}; shorten the prompt")
    if f.num_samples < 1 or f.max_new_tokens < 1 or f.temperature < 0 or f.top_k < 0 or not 0 < f.top_p <= 1:
        raise cli.UserError("need --num_samples >= 1, --max_new_tokens >= 1, --temperature >= 0, --top_k >= 0 "
                            "and 0 < --top_p <= 1")
    layout = shd.make_layout({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
    model = TransformerLM(model_config)
    params = ckpt.params(step, state_lib.abstract_params(model, layout))
    prompts = jnp.asarray(np.tile(prompt, (f.num_samples, 1)), jnp.int32)
    cache = init_cache(model_config, f.num_samples)
    with layout.scope():
        out = generate(model_apply(model), params, cache, prompts, jax.random.key(f.seed), f.max_new_tokens,
                       f.temperature, f.top_k, f.top_p)
    for i, row in enumerate(np.asarray(out)):
        ids = row.tolist()
        ids = ids[: ids.index(tokenizer.eos_id)] if tokenizer.eos_id in ids else ids
        print(f"--- sample {i + 1} (step {step}) ---")
        print(f.prompt + tokenizer.decode(ids), flush=True)


if __name__ == "__main__":
    flags.DEFINE_string("workdir", None, "Run directory holding checkpoints.", required=True)
    flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
    flags.DEFINE_string("prompt", "", "Text to continue.")
    flags.DEFINE_integer("max_new_tokens", 200, "Tokens to generate per sample.")
    flags.DEFINE_float("temperature", 0.8, "Softmax temperature; 0 is greedy.")
    flags.DEFINE_integer("top_k", 50, "Sample among the k most likely tokens; 0 turns it off.")
    flags.DEFINE_float("top_p", 1.0, "Sample among the most likely tokens whose mass reaches p; 1 turns it off.")
    flags.DEFINE_integer("num_samples", 1, "Samples to draw.")
    flags.DEFINE_integer("seed", 0, "Random seed; the same seed gives the same samples.")
    cli.run(main)
