"""Sampling: filters checked against a fake logits function, determinism, and greedy decoding of a real model."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lm.config import ModelConfig
from lm.model import TransformerLM, init_cache
from lm.sample import generate, model_apply
from lm.state import boxed_params

V = 20


def fake_apply(params, tokens, positions, segment_ids, cache):
    """The same logits (`params`, [V]) at every position, whatever the input."""
    logits = jnp.broadcast_to(params, tokens.shape + (V,))
    return logits, {**cache, "index": cache["index"] + tokens.shape[1]}


def _fake_generate(logits, steps=50, batch=16, seed=0, **kw):
    cache = {"index": jnp.zeros((), jnp.int32), "segment_ids": jnp.zeros((batch, 8), jnp.int32)}
    prompt = jnp.zeros((batch, 3), jnp.int32)
    out = generate(fake_apply, jnp.asarray(logits, jnp.float32), cache, prompt, jax.random.key(seed), steps, **kw)
    return np.asarray(out)


LOGITS = np.random.default_rng(0).normal(size=V) * 2


def test_top_k_never_leaves_the_k_most_likely():
    out = _fake_generate(LOGITS, temperature=1.0, top_k=5)
    allowed = set(np.argsort(LOGITS)[-5:])
    assert set(out.ravel()) <= allowed
    assert len(set(out.ravel())) > 1  # it does sample


def test_top_p_never_leaves_the_nucleus():
    probs = np.array([0.5, 0.3, 0.1, 0.05] + [0.05 / (V - 4)] * (V - 4))
    logits = np.log(probs)
    assert set(_fake_generate(logits, temperature=1.0, top_p=0.75).ravel()) == {0, 1}
    assert set(_fake_generate(logits, temperature=1.0, top_p=0.85).ravel()) == {0, 1, 2}
    assert set(_fake_generate(logits, temperature=1.0, top_p=0.4).ravel()) == {0}


def test_temperature_zero_is_argmax():
    assert (_fake_generate(LOGITS, temperature=0.0, top_k=3) == np.argmax(LOGITS)).all()


def test_same_seed_same_samples():
    a = _fake_generate(LOGITS, temperature=1.0, seed=7)
    assert (a == _fake_generate(LOGITS, temperature=1.0, seed=7)).all()
    assert (a != _fake_generate(LOGITS, temperature=1.0, seed=8)).any()
    assert len({tuple(row) for row in a}) > 1  # rows are different samples


def test_greedy_decoding_of_a_real_model_matches_full_forward_passes():
    """Cached greedy decoding, also past the context (where the newest half of the context is prefilled again)."""
    cfg = ModelConfig(vocab_size=30, max_len=8, num_layers=2, num_heads=2, embed_dim=16, mlp_dim=32)
    model = TransformerLM(cfg)
    params = nn.unbox(boxed_params(model, 1))
    forward = jax.jit(functools.partial(model.apply, {"params": params}))
    prompt = [1, 5, 7]
    steps = 20
    out = generate(model_apply(model), params, init_cache(cfg, 1), jnp.asarray([prompt]), jax.random.key(0), steps,
                   temperature=0.0)
    tokens, start = list(prompt), 0  # reference: the same context policy, recomputed from scratch each step
    for _ in range(steps):
        if len(tokens) - start > cfg.max_len:
            start = len(tokens) - cfg.max_len // 2
        ctx = np.asarray([tokens[start:]])
        logits = forward(ctx, np.arange(ctx.shape[1])[None], np.ones_like(ctx))
        tokens.append(int(np.argmax(logits[0, -1])))
    assert np.asarray(out)[0].tolist() == tokens[len(prompt):]
