"""The model: causality, packed documents kept apart, logical names on every parameter, cached decoding."""

import dataclasses
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm.backends import select
from lm.model import objective
from lm.model.config import ModelConfig
from lm.model.transformer import init_cache
from lm.parallel.placement import boxed_params

CFG = ModelConfig(vocab_size=50, max_len=16, num_layers=2, num_heads=2, embed_dim=16, mlp_dim=32)


def _setup(cfg: ModelConfig = CFG):
    model = select.model(cfg)
    params = jax.jit(lambda: nn.unbox(boxed_params(model, 0)))()
    return model, params


def _logits(model, params, tokens, positions=None, segments=None):
    tokens = jnp.asarray(tokens)[None]
    positions = jnp.arange(tokens.shape[1])[None] if positions is None else jnp.asarray(positions)[None]
    segments = jnp.ones_like(tokens) if segments is None else jnp.asarray(segments)[None]
    return np.asarray(jax.jit(model.apply)({"params": params}, tokens, positions, segments))[0]


def test_logits_at_t_do_not_depend_on_later_tokens():
    model, params = _setup()
    rng = np.random.default_rng(0)
    a = rng.integers(0, CFG.vocab_size, 16)
    b = a.copy()
    b[9:] = rng.integers(0, CFG.vocab_size, 7)
    la, lb = _logits(model, params, a), _logits(model, params, b)
    np.testing.assert_allclose(la[:9], lb[:9], atol=1e-5)
    assert np.abs(la[9:] - lb[9:]).max() > 1e-3  # later positions do see the change


def test_padded_vocabulary_rows_change_no_logit():
    """vocab_multiple pads the table to 64 rows; logits still cover exactly the 50 ids, whatever the pad rows hold."""
    model, params = _setup()
    padded = select.model(dataclasses.replace(CFG, vocab_multiple=32))
    pad_rows = np.random.default_rng(1).normal(size=(14, CFG.embed_dim)).astype(np.float32)
    padded_params = dict(params, token_embedding=jnp.concatenate([params["token_embedding"], pad_rows]))
    tokens = np.random.default_rng(0).integers(0, CFG.vocab_size, 16)
    want, got = _logits(model, params, tokens), _logits(padded, padded_params, tokens)
    assert padded.config.padded_vocab == 64 and got.shape == want.shape == (16, 50)
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_loss_over_padded_vocabulary_equals_log_softmax_of_the_logits():
    """The objective reads the head's padded columns masked (not cut) and picks targets by a compare: its losses
    and their gradients equal those of a log-softmax over the model's V logits, gathered at the targets."""
    model = select.model(dataclasses.replace(CFG, vocab_multiple=32))  # 50 ids, 64 head columns
    params = jax.jit(lambda: nn.unbox(boxed_params(model, 0)))()
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(rng.integers(0, CFG.vocab_size, (2, 17)), jnp.int32)
    batch = {"tokens": tokens, "segment_ids": jnp.ones_like(tokens),
             "positions": jnp.broadcast_to(jnp.arange(17), tokens.shape)}

    def reference(p):
        logits = model.apply({"params": p}, tokens[:, :-1], batch["positions"][:, :-1], batch["segment_ids"][:, :-1])
        log_probs = jax.nn.log_softmax(logits, axis=-1)  # [B, T, 50]
        return -jnp.take_along_axis(log_probs, tokens[:, 1:, None], axis=-1).sum()

    got, got_grads = jax.jit(jax.value_and_grad(lambda p: objective.summed_loss(model, p, batch)[0]))(params)
    want, want_grads = jax.jit(jax.value_and_grad(reference))(params)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    for g, w in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads), strict=True):
        np.testing.assert_allclose(g, w, atol=1e-5)
    assert np.abs(got_grads["token_embedding"][CFG.vocab_size:]).max() == 0  # padding rows get no gradient


def test_packed_documents_never_attend_to_each_other():
    model, params = _setup()
    rng = np.random.default_rng(1)
    doc1, doc2 = rng.integers(0, CFG.vocab_size, 7), rng.integers(0, CFG.vocab_size, 9)
    packed = np.concatenate([doc1, doc2])
    positions = np.concatenate([np.arange(7), np.arange(9)])
    segments = np.array([1] * 7 + [2] * 9)
    lp = _logits(model, params, packed, positions, segments)
    np.testing.assert_allclose(lp[:7], _logits(model, params, doc1), atol=1e-5)
    np.testing.assert_allclose(lp[7:], _logits(model, params, doc2), atol=1e-5)
    other = packed.copy()
    other[:7] = rng.integers(0, CFG.vocab_size, 7)  # another first document changes nothing in the second
    np.testing.assert_allclose(_logits(model, params, other, positions, segments)[7:], lp[7:], atol=1e-5)


def test_every_parameter_has_one_logical_name_per_dimension():
    boxed = jax.eval_shape(lambda: boxed_params(select.model(CFG), 0))
    leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert leaves and all(isinstance(x, nn.Partitioned) for x in leaves)
    for box in leaves:
        assert len(box.names) == box.value.ndim, (box.names, box.value.shape)


LLAMA = dataclasses.replace(CFG, num_heads=4, num_kv_heads=2, position="rope", norm="rmsnorm", mlp="swiglu",
                            use_bias=False, tie_embeddings=False, qk_norm=True, vocab_multiple=16)


@pytest.mark.parametrize("cfg", [CFG, LLAMA, dataclasses.replace(CFG, scan_layers=False)],
                         ids=["gpt2", "llama_gqa", "gpt2_unrolled"])
def test_cached_decoding_equals_full_forward(cfg):
    """Prefill of 5 tokens, then one token at a time: the logits at every position equal the full forward's."""
    model, params = _setup(cfg)
    tokens = np.random.default_rng(2).integers(0, cfg.vocab_size, (2, 12))
    apply = jax.jit(model.apply)
    full = np.asarray(apply({"params": params}, tokens, np.tile(np.arange(12), (2, 1)), np.ones_like(tokens)))
    cache = init_cache(cfg, 2)
    prefill, cache = apply({"params": params}, tokens[:, :5], np.tile(np.arange(5), (2, 1)),
                                 np.ones((2, 5), np.int32), cache)
    np.testing.assert_allclose(prefill, full[:, :5], atol=1e-5)
    for t in range(5, 12):
        step, cache = apply({"params": params}, tokens[:, t:t + 1], np.full((2, 1), t), np.ones((2, 1), np.int32),
                                  cache)
        np.testing.assert_allclose(step[:, 0], full[:, t], atol=1e-5)
    assert int(cache["index"]) == 12


@pytest.mark.parametrize("batch", [1, 8])
def test_a_decode_step_reads_every_weight_in_place(batch):
    """XLA once copied the attention output kernel [N, H, D] into another layout at every decode step, to fit
    the attention output's: a third of a GPT-2 decode step. No instruction of the compiled step may compute a
    parameter in another layout (its op_name would then be the parameter's path, `variables['params'][...]`)."""
    cfg = dataclasses.replace(CFG, embed_dim=64, num_heads=4, mlp_dim=256, scan_layers=False)
    model, params = _setup(cfg)
    cache = init_cache(cfg, batch, 16)
    ones = jnp.ones((batch, 1), jnp.int32)
    hlo = jax.jit(model.apply).lower({"params": params}, ones, ones, ones, cache).compile().as_text()
    copies = [line.strip()[:200] for line in hlo.split("\n")
              if 'op_name="variables[' in line and re.search(r"= \S+ (copy|transpose|fusion)\(", line)]
    assert not copies, copies


def test_z_loss_value_and_gradient_are_the_closed_form():
    """summed_loss adds z * log(Z)^2 over counted targets; its gradient with respect to the logits is
    softmax - onehot(target) + 2 z log(Z) softmax, carried back to the parameters through the logits."""
    model, params = _setup()
    z = 0.3
    rng = np.random.default_rng(3)
    tokens = jnp.asarray(rng.integers(0, CFG.vocab_size, (2, 17)), jnp.int32)
    segments = jnp.asarray([[1] * 9 + [2] * 8, [1] * 13 + [0] * 4])  # two documents; padding at the end
    positions = jnp.asarray([list(range(9)) + list(range(8)), list(range(13)) + [0] * 4])
    batch = {"tokens": tokens, "segment_ids": segments, "positions": positions}

    def logits_of(p):
        return model.apply({"params": p}, tokens[:, :-1], positions[:, :-1], segments[:, :-1])  # [B, T, V]

    logits = np.asarray(jax.jit(logits_of)(params), np.float64)
    seg = np.asarray(segments)
    counted = (seg[:, 1:] == seg[:, :-1]) & (seg[:, 1:] > 0)  # 15 + 12 targets
    assert counted.sum() == 27
    log_z = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    targets = np.asarray(tokens[:, 1:])
    picked = np.take_along_axis(logits, targets[..., None], -1)[..., 0]
    want = ((log_z - picked) * counted).sum() + z * (log_z**2 * counted).sum()
    softmax = np.exp(logits - log_z[..., None])
    onehot = np.eye(CFG.vocab_size)[targets]
    d_logits = (softmax - onehot + 2 * z * log_z[..., None] * softmax) * counted[..., None]
    want_grads = jax.jit(lambda p, d: jax.vjp(logits_of, p)[1](d)[0])(params, jnp.asarray(d_logits, jnp.float32))

    value, grads = jax.jit(jax.value_and_grad(lambda p: objective.summed_loss(model, p, batch, z)[0]))(params)
    np.testing.assert_allclose(value, want, rtol=1e-5)
    assert z * (log_z**2 * counted).sum() > 1.0  # the penalty is a visible part of the value
    for g, w in zip(jax.tree.leaves(grads), jax.tree.leaves(want_grads), strict=True):
        np.testing.assert_allclose(g, w, atol=1e-5, rtol=1e-4)
