"""Weight formats for sampling: int8 keeps a quarter of the bytes, stays within half a step of each weight, and
a trained model's predictions barely move; bfloat16 likewise."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm.backends import select
from lm.checkpoint import reader
from lm.model.config import ModelConfig
from lm.parallel import mesh as shd
from lm.parallel import placement
from lm.sample import weights as formats
from lm.sample.generate import model_for


def _trained(workdir):
    ckpt, step, c, tok, _ = reader.open_run(workdir)
    layout = shd.tensor_layout(1)
    return c, ckpt.params(step, placement.abstract_params(select.model(c), layout)), tok


def test_int8_weights_are_a_quarter_of_the_bytes_and_within_half_a_step(tiny_run):
    c, params, _ = _trained(tiny_run[0])
    q = formats.convert(params, "int8")
    assert formats.is_int8(q) and not formats.is_int8(params)
    leaves = jax.tree.leaves(q, is_leaf=lambda x: isinstance(x, formats.Int8Weight))
    matrices = [x for x in leaves if isinstance(x, formats.Int8Weight)]
    assert matrices and all(m.values.dtype == jnp.int8 for m in matrices)
    assert all(x.dtype == jnp.float32 for x in leaves if not isinstance(x, formats.Int8Weight))
    for m in matrices:  # one float32 scale per output channel: shared by a whole input axis
        assert m.scale.dtype == jnp.float32 and m.scale.size * 16 <= m.values.size
    total = sum(x.size for x in jax.tree.leaves(params))
    assert sum(m.values.size for m in matrices) > 0.9 * total  # nearly every weight is in a matrix
    back = jax.tree.map(lambda m: m.values * m.scale if isinstance(m, formats.Int8Weight) else m, q,
                        is_leaf=lambda x: isinstance(x, formats.Int8Weight))
    for w, d, m in zip(jax.tree.leaves(params), jax.tree.leaves(back), leaves, strict=True):
        step = m.scale if isinstance(m, formats.Int8Weight) else 0.0
        assert np.all(np.abs(np.asarray(w) - np.asarray(d)) <= np.asarray(step) / 2 + 1e-7)


@pytest.mark.parametrize("fmt, max_error", [("int8", 0.05), ("int8_dynamic", 0.05), ("bfloat16", 0.01)])
def test_a_trained_model_predicts_nearly_the_same_from_converted_weights(tiny_run, fmt, max_error):
    c, params, tok = _trained(tiny_run[0])
    ids = np.asarray([tok.encode("ROMEO: What say you, my lord? Speak, and be brief.")[: c.max_len]])
    def apply(p):  # the model as the sampler builds it for these weights
        return np.asarray(jax.jit(model_for(c, p).apply)({"params": p}, ids, np.arange(ids.shape[1])[None],
                                                          np.ones_like(ids)))

    want, got = apply(params), apply(formats.convert(params, fmt))
    error = np.linalg.norm(got - want) / np.linalg.norm(want)
    agree = (got.argmax(-1) == want.argmax(-1)).mean()
    print(f"{fmt}: logits relative error {error:.2e}, next-token argmax agreement {agree:.0%}")
    assert error < max_error and agree >= 0.9



@pytest.mark.parametrize("c", [
    ModelConfig(vocab_size=50, max_len=16, num_layers=2, num_heads=4, embed_dim=32, mlp_dim=64),
    ModelConfig(vocab_size=50, max_len=16, num_layers=2, num_heads=4, embed_dim=32, mlp_dim=64, num_kv_heads=1,
                position="rope", norm="rmsnorm", mlp="swiglu", use_bias=False, tie_embeddings=False,
                scan_layers=False)], ids=["gpt2", "llama_mqa_unrolled"])
def test_the_model_reads_int8_weights_as_their_float_values(c):
    """Matmuls scale their output and look-ups their rows: the logits of the weights expanded to float."""
    model = select.model(c)
    ids = np.random.default_rng(0).integers(0, c.vocab_size, (2, c.max_len))
    args = (ids, np.broadcast_to(np.arange(c.max_len), ids.shape), np.ones_like(ids))
    params = model.init(jax.random.key(0), *args)["params"]
    q = formats.convert(nn.meta.unbox(params), "int8")
    expanded = jax.tree.map(lambda m: m.values * m.scale if isinstance(m, formats.Int8Weight) else m, q,
                            is_leaf=lambda x: isinstance(x, formats.Int8Weight))
    def apply(p):
        return np.asarray(jax.jit(model_for(c, p).apply)({"params": p}, *args))

    np.testing.assert_allclose(apply(q), apply(expanded), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("equation, x_shape, kernel_shape, input_axes", [
    ("btd,dnh->btnh", (1, 1, 32), (32, 4, 8), (0,)),  # one token: the padded int8 row
    ("btd,dnh->btnh", (3, 5, 32), (32, 4, 8), (0,)),
    ("btnh,nhd->btd", (2, 3, 4, 8), (4, 8, 32), (0, 1)),
    ("btd,dv->btv", (2, 3, 32), (32, 50), (0,)),
])
def test_int8_dynamic_matmuls_are_the_float_matmul_of_tokens_rounded_per_token(equation, x_shape, kernel_shape,
                                                                                input_axes):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=x_shape), jnp.float32)
    w = jnp.asarray(rng.normal(size=kernel_shape), jnp.float32)
    weight = formats.Int8Weight(*formats._to_int8(w, input_axes), dynamic=True)
    contracted = tuple(i for i, a in enumerate(equation.split(",")[0]) if a not in equation.split("->")[1])
    x_int, x_scale = formats._to_int8(x, contracted)
    want = jnp.einsum(equation, x_int * x_scale, weight.values * weight.scale)
    got = jax.jit(lambda x, k: formats.einsum(equation, x, k, "float32"))(x, weight)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
    exact = jnp.einsum(equation, x, w)
    assert float(jnp.linalg.norm(got - exact) / jnp.linalg.norm(exact)) < 0.02  # rounding both costs ~1%
