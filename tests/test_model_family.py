"""Model options: attention implementations, grouped-query heads, scan, remat, accumulation, precision."""

import dataclasses
import math
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import wide_params

from lm.backends import cpu_attention, select
from lm.model import layers
from lm.model.attention import attention_mask, reference_attention
from lm.model.config import ModelConfig
from lm.model.transformer import init_cache
from lm.parallel.placement import boxed_params
from lm.train.step import loss_and_grads

GPT2 = ModelConfig(vocab_size=64, max_len=16, num_layers=2, num_heads=4, embed_dim=32, mlp_dim=64)
LLAMA = dataclasses.replace(GPT2, num_kv_heads=2, position="rope", norm="rmsnorm", mlp="swiglu", use_bias=False,
                            tie_embeddings=False, qk_norm=True)
IMPLEMENTATIONS = ["xla"] + ({"gpu": ["cudnn"], "cpu": ["cpu"]}.get(jax.default_backend(), []))


def _params(cfg, seed=0):
    return jax.jit(lambda: nn.unbox(boxed_params(select.model(cfg), seed)))()


def _batch(b=8, t=17, seed=0, vocab=64):
    rng = np.random.default_rng(seed)
    segments = np.sort(rng.integers(1, 4, (b, t)), axis=1)  # 1-3 documents per row
    positions = np.zeros((b, t), np.int32)
    for r in range(b):
        for i in range(1, t):
            positions[r, i] = 0 if segments[r, i] != segments[r, i - 1] else positions[r, i - 1] + 1
    return {"tokens": jnp.asarray(rng.integers(0, vocab, (b, t)), jnp.int32),
            "segment_ids": jnp.asarray(segments, jnp.int32), "positions": jnp.asarray(positions)}


def _logits(cfg, params, batch):
    apply = jax.jit(select.model(cfg).apply)
    return apply({"params": params}, batch["tokens"], batch["positions"], batch["segment_ids"])


@pytest.mark.parametrize("kind", IMPLEMENTATIONS)
@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("kv_heads", [4, 2, 1])
def test_attention_implementations_agree_with_the_einsum_reference(kind, packed, kv_heads):
    rng = np.random.default_rng(0)
    q = jnp.asarray(rng.normal(size=(2, 12, 4, 8)), jnp.float32)
    k, v = (jnp.asarray(rng.normal(size=(2, 12, kv_heads, 8)), jnp.float32) for _ in range(2))
    segments = jnp.asarray([[1] * 5 + [2] * 7, [1] * 12]) if packed else jnp.ones((2, 12), jnp.int32)
    slots = jnp.arange(12)
    mask = attention_mask(slots, slots, segments, segments)
    want = reference_attention(q, k, v, mask)
    np.testing.assert_allclose(select.ATTENTION[kind](q, k, v, mask, True), want, atol=1e-5)


CPU_KINDS = [(a, m) for a in ("reference", "xla", "cpu") for m in ("xla", "cpu")]


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_every_implementation_a_cpu_has_gives_the_same_logits_and_gradients(family):
    """Attention (the einsum reference, XLA's, the CPU kernel) and projections (XLA's einsum, the CPU matmul),
    each pair handed to the model as its Ops: the logits, loss and every gradient equal those of the einsum
    reference with XLA's projections, on packed rows, in float32."""
    cfg = {"gpt2": GPT2, "llama": LLAMA}[family]
    params, batch = _params(cfg), _batch()
    results = {}
    for attention, matmul in CPU_KINDS:
        c = dataclasses.replace(cfg, attention=attention, matmul=matmul)
        assert select.kinds(c, "cpu") == (attention, matmul)
        model = select.model(c)
        logits = jax.jit(model.apply)({"params": params}, batch["tokens"][:, :-1], batch["positions"][:, :-1],
                                      batch["segment_ids"][:, :-1])
        results[attention, matmul] = (logits, *jax.jit(lambda p, b, m=model: loss_and_grads(m, p, b))(params, batch))
    want_logits, want_loss, want_grads = results["reference", "xla"]
    for kinds, (logits, loss, grads) in results.items():
        np.testing.assert_allclose(logits, want_logits, atol=1e-5, err_msg=str(kinds))
        np.testing.assert_allclose(loss, want_loss, rtol=1e-6, err_msg=str(kinds))
        for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(want_grads), strict=True):
            np.testing.assert_allclose(a, b, atol=1e-6, err_msg=str(kinds))
    assert select.kinds(cfg, "cpu") == ("cpu", "cpu") and select.kinds(cfg, "tpu") == ("xla", "xla")
    assert select.kinds(dataclasses.replace(cfg, dtype="bfloat16"), "gpu") == ("cudnn", "xla")


@pytest.mark.parametrize("cfg", [GPT2, LLAMA], ids=["gpt2", "llama"])
def test_causal_attention_over_several_query_blocks_equals_the_einsum_model(cfg):
    """300 tokens are three query blocks of the CPU attention (128, 128, 44), with documents crossing the block
    edges: the model's logits and gradients equal those of the same model on the einsum reference."""
    t = 300
    assert t > 2 * cpu_attention.QUERY_BLOCK
    cfg = dataclasses.replace(cfg, max_len=t, attention="cpu", num_layers=1)
    params = _params(cfg)
    rng = np.random.default_rng(1)
    starts = [0, 100, 131, 250, 256]  # documents begin inside and at the edges of the blocks
    segments = np.cumsum(np.isin(np.arange(t + 1), starts))[None].repeat(2, 0)
    positions = np.concatenate([np.arange(n) for n in np.diff(starts + [t + 1])])[None].repeat(2, 0)
    batch = {"tokens": jnp.asarray(rng.integers(0, 64, (2, t + 1)), jnp.int32),
             "segment_ids": jnp.asarray(segments, jnp.int32), "positions": jnp.asarray(positions, jnp.int32)}
    reference = dataclasses.replace(cfg, attention="reference")
    got, want = (_logits(c, params, {k: v[:, :-1] for k, v in batch.items()}) for c in (cfg, reference))
    np.testing.assert_allclose(got, want, atol=1e-5)
    (l1, g1), (l2, g2) = (jax.jit(lambda p, b, c=c: loss_and_grads(select.model(c), p, b))(params, batch)
                          for c in (cfg, reference))
    np.testing.assert_allclose(l1, l2, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_grouped_query_attention_equals_multi_head_with_shared_kv_heads():
    gqa = dataclasses.replace(LLAMA, qk_norm=False)
    mha = dataclasses.replace(gqa, num_kv_heads=0)
    params = _params(gqa)
    repeated = jax.tree.map(lambda x: x, params)
    group = gqa.num_heads // gqa.kv_heads
    for name in ("key", "value"):  # MHA head n uses the kv head n // group
        kernel = params["blocks"]["attn"][name]["kernel"]  # [L, D, K, H]
        repeated["blocks"]["attn"][name]["kernel"] = jnp.repeat(kernel, group, axis=2)
    batch = _batch()
    np.testing.assert_allclose(_logits(mha, repeated, batch), _logits(gqa, params, batch), atol=1e-5)
    same = dataclasses.replace(gqa, num_kv_heads=gqa.num_heads)  # kv heads = heads is plain multi-head
    shapes = lambda c: jax.tree.map(jnp.shape, jax.eval_shape(lambda: _params(c)))  # noqa: E731
    assert shapes(same) == shapes(mha)


@pytest.mark.parametrize("cfg", [GPT2, LLAMA], ids=["gpt2", "llama"])
def test_scan_over_layers_equals_the_unrolled_model(cfg):
    params = _params(cfg)
    unrolled = {k: v for k, v in params.items() if k != "blocks"}
    for i in range(cfg.num_layers):
        unrolled[f"block_{i}"] = jax.tree.map(lambda x, i=i: x[i], params["blocks"])
    batch = _batch()
    scanned = _logits(cfg, params, batch)
    np.testing.assert_allclose(_logits(dataclasses.replace(cfg, scan_layers=False), unrolled, batch), scanned,
                               atol=1e-5)
    np.testing.assert_allclose(_logits(dataclasses.replace(cfg, scan_unroll=0), params, batch), scanned, atol=1e-5)


# Forward products one layer's backward needs again: query, key, value, out, scores and values, and the MLP's
# input projections (fc; gate and up); the MLP's output projection is not needed by the backward.
RECOMPUTED_BY_FULL_REMAT = {"gpt2": 4 + 2 + 1, "llama": 4 + 2 + 2}


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_every_remat_policy_reaches_the_compiled_step_with_the_same_loss_and_gradients(family):
    """Each policy compiles into a program of its own: `full` recomputes every forward product of the scanned
    layer that its backward needs, `dots` fewer (it keeps products), `dots_no_batch` more than `dots` (it keeps
    no product with batch axes: attention's); the loss and gradients stay the same."""
    cfg = {"gpt2": GPT2, "llama": LLAMA}[family]
    params, batch = _params(cfg), _batch()
    products, temp, results = {}, {}, {}
    for policy in ("none", "full", "dots", "dots_no_batch"):
        c = dataclasses.replace(cfg, remat=policy)
        step = jax.jit(lambda p, b, c=c: loss_and_grads(select.model(c), p, b)).lower(params, batch).compile()
        products[policy] = len(re.findall(r"= \S+ dot\(", step.as_text()))
        temp[policy] = step.memory_analysis().temp_size_in_bytes
        results[policy] = step(params, batch)
    recomputed = {k: n - products["none"] for k, n in products.items()}
    print(f"products recomputed {recomputed}, temporary bytes {temp}")
    assert recomputed["full"] == RECOMPUTED_BY_FULL_REMAT[family]
    assert 0 < recomputed["dots"] < recomputed["dots_no_batch"] <= recomputed["full"]
    assert temp["full"] < temp["dots"] < temp["none"]
    loss, grads = results["none"]
    for policy in ("full", "dots", "dots_no_batch"):
        l2, g2 = results[policy]
        np.testing.assert_allclose(l2, loss, rtol=1e-6)
        for a, b in zip(jax.tree.leaves(g2), jax.tree.leaves(grads), strict=True):
            np.testing.assert_allclose(a, b, atol=1e-6)


def test_gradient_accumulation_equals_one_big_batch():
    model, params, batch = select.model(LLAMA), _params(LLAMA), _batch(b=8)
    loss, grads = jax.jit(lambda p, b: loss_and_grads(model, p, b, z_loss=1e-4))(params, batch)
    loss4, grads4 = jax.jit(lambda p, b: loss_and_grads(model, p, b, microbatches=4, z_loss=1e-4))(params, batch)
    np.testing.assert_allclose(loss4, loss, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(grads4), jax.tree.leaves(grads), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)


def test_llama_cached_decoding_equals_full_forward():
    model, params = select.model(LLAMA), _params(LLAMA)
    apply = jax.jit(model.apply)
    tokens = np.random.default_rng(2).integers(0, 64, (2, 12))
    pos = np.tile(np.arange(12), (2, 1))
    full = np.asarray(apply({"params": params}, tokens, pos, np.ones_like(tokens)))
    cache = init_cache(LLAMA, 2)
    out, cache = apply({"params": params}, tokens[:, :5], pos[:, :5], np.ones((2, 5), np.int32), cache)
    np.testing.assert_allclose(out, full[:, :5], atol=1e-5)
    for t in range(5, 12):
        out, cache = apply({"params": params}, tokens[:, t:t + 1], pos[:, t:t + 1], np.ones((2, 1), np.int32), cache)
        np.testing.assert_allclose(out[:, 0], full[:, t], atol=1e-5)


def test_bfloat16_compute_keeps_float32_parameters_and_logits():
    cfg = dataclasses.replace(LLAMA, dtype="bfloat16")
    params, batch = _params(cfg), _batch()
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
    logits = _logits(cfg, params, batch)
    assert logits.dtype == jnp.float32
    # bfloat16 keeps 8 significant bits (a relative rounding of up to 2^-8): the logits were measured 1.4 such
    # roundings of the largest logit away (2.3e-3, logits up to 0.41); float32 compute would be ~1e-7 away.
    want = np.asarray(_logits(LLAMA, params, batch))
    scale, err = np.abs(want).max(), np.abs(np.asarray(logits) - want).max()
    assert 2**-8 * scale / 10 < err < 2**-8 * scale * 4, (err, scale)
    loss, grads = jax.jit(lambda p, b: loss_and_grads(select.model(cfg), p, b))(params, batch)
    assert np.isfinite(loss) and all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads))


def _jaxpr(cfg):
    """The traced forward pass of a model of `cfg` on 8 tokens, as text (nothing is compiled or run)."""
    model = select.model(cfg)
    params = jax.eval_shape(lambda: nn.unbox(boxed_params(model, 0)))
    tokens = jnp.zeros((1, 8), jnp.int32)
    return str(jax.make_jaxpr(lambda p: model.apply({"params": p}, tokens, tokens + jnp.arange(8), tokens + 1))(params))


@pytest.mark.parametrize("cfg,norms", [(GPT2, 2 * 2 + 1), (LLAMA, 4 * 2 + 1)], ids=["layernorm", "rmsnorm_qk_norm"])
def test_norm_eps_reaches_every_norm(cfg, norms):
    """Each norm adds norm_eps to its variance: 2 per layer and the final one, and the query and key norms of
    QK-norm (2 more per layer), in the unrolled model of 2 layers. (15/128 is exact in float32 and no other
    constant of the model.)"""
    cfg = dataclasses.replace(cfg, norm_eps=15 / 128, scan_layers=False)
    assert len(re.findall(r"= add \w+ 0\.1171875:f32\[\]", _jaxpr(cfg))) == norms


def test_scan_unroll_sets_the_layers_per_iteration_of_the_scanned_loop():
    """1 and 2 layers per iteration, and 0 for all of them (4)."""
    cfg = dataclasses.replace(GPT2, num_layers=4)
    for unroll, want in ((1, 1), (2, 2), (0, 4)):
        text = _jaxpr(dataclasses.replace(cfg, scan_unroll=unroll))
        assert re.findall(r"\bunroll=(\w+)", text) == [str(want)] and "length=4" in text, unroll


@pytest.mark.parametrize("cfg", [GPT2, LLAMA], ids=["gpt2", "llama"])
def test_param_dtype_is_the_dtype_of_every_parameter(cfg):
    """bfloat16 parameters: embeddings, kernels, biases and norm scales alike (GPT-2: learned positions, biases,
    LayerNorm; Llama: an untied head, QK-norm)."""
    params = jax.eval_shape(lambda: nn.unbox(boxed_params(select.model(dataclasses.replace(
        cfg, param_dtype="bfloat16")), 0)))
    leaves = jax.tree_util.tree_leaves_with_path(params)
    assert len(leaves) > 10 and {x.dtype for _, x in leaves} == {jnp.dtype(jnp.bfloat16)}, leaves


def _llama3_reference(freqs, factor, low_freq_factor, high_freq_factor, old_context_len):
    """Llama 3.1's frequency scaling, one frequency at a time (Meta's `apply_scaling`)."""
    low_freq_wavelen, high_freq_wavelen = old_context_len / low_freq_factor, old_context_len / high_freq_factor
    out = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < high_freq_wavelen:
            out.append(freq)
        elif wavelen > low_freq_wavelen:
            out.append(freq / factor)
        else:
            smooth = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
            out.append((1 - smooth) * freq / factor + smooth * freq)
    return out


def test_llama3_rope_frequencies_are_those_of_the_reference_scaling():
    """A head of 32 at theta 10000, wavelengths 6.3 to 4e4, against a context of 256 / 2 and / 6: some kept, some
    blended, the rest stretched by 3."""
    base = [10000.0 ** (-i / 32) for i in range(0, 32, 2)]
    want = _llama3_reference(base, 3.0, 2.0, 6.0, 256)
    kinds = [w == f for w, f in zip(want, base, strict=True)], [w == f / 3 for w, f in zip(want, base, strict=True)]
    assert sum(kinds[0]) >= 3 and sum(kinds[1]) >= 3 and len(want) - sum(kinds[0]) - sum(kinds[1]) >= 2
    got = layers.rope_frequencies(32, 10000.0, "llama3", 3.0, 2.0, 6.0, 256)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    np.testing.assert_allclose(layers.rope_frequencies(32, 10000.0), base, rtol=1e-6)


def test_every_llama3_rope_key_reaches_the_model():
    """Two cases where Llama 3 scaling is plain RoPE by construction: every wavelength stretched by 2 (each above
    rope_original_max_len / rope_low_freq_factor = 16 / 4), the plain model's logits at positions 0..7 are the
    scaled model's at 0, 2, ..14; and none stretched (theta 2: wavelengths 6.3 to 10.6, each below 24 / 2), the
    same logits at the same positions. Each key left at its default breaks one of them."""
    plain = dataclasses.replace(LLAMA, qk_norm=False, num_layers=1)  # head width 8, theta 10000
    params = wide_params(plain, 0)  # attention that hangs on the positions (see conftest.wide_params)
    tokens = np.random.default_rng(4).integers(0, 64, (2, 8))
    ones = np.ones_like(tokens)

    def logits(c, positions):
        return np.asarray(jax.jit(select.model(c).apply)({"params": params}, tokens, positions, ones))

    steps = np.tile(np.arange(8), (2, 1))
    stretched = dataclasses.replace(plain, rope_scaling="llama3", rope_factor=2.0, rope_original_max_len=16,
                                    rope_low_freq_factor=4.0, rope_high_freq_factor=8.0)
    np.testing.assert_allclose(logits(stretched, 2 * steps), logits(plain, steps), atol=1e-5)
    slow = dataclasses.replace(plain, rope_theta=2.0)
    kept = dataclasses.replace(slow, rope_scaling="llama3", rope_factor=2.0, rope_original_max_len=24,
                               rope_low_freq_factor=1.0, rope_high_freq_factor=2.0)
    np.testing.assert_allclose(logits(kept, steps), logits(slow, steps), atol=1e-5)
    assert np.abs(logits(plain, 2 * steps) - logits(plain, steps)).max() > 0.1  # the positions do matter
