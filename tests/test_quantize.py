"""Weight formats for sampling: int8 keeps a quarter of the bytes, stays within half a step of each weight, and
a trained model's predictions barely move; bfloat16 likewise."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm import checkpoint, quantize
from lm import sharding as shd
from lm import state as state_lib
from lm.model import TransformerLM


def _trained(workdir):
    ckpt, step, c, tok, _ = checkpoint.open_run(workdir)
    layout = shd.make_layout({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
    return c, ckpt.params(step, state_lib.abstract_params(TransformerLM(c), layout)), tok


def test_int8_weights_are_a_quarter_of_the_bytes_and_within_half_a_step(tiny_run):
    c, params, _ = _trained(tiny_run[0])
    q = quantize.convert(params, "int8")
    assert quantize.is_int8(q) and not quantize.is_int8(params)
    leaves = jax.tree.leaves(q, is_leaf=lambda x: isinstance(x, quantize.Int8Weight))
    matrices = [x for x in leaves if isinstance(x, quantize.Int8Weight)]
    assert matrices and all(m.values.dtype == jnp.int8 for m in matrices)
    assert all(x.dtype == jnp.float32 for x in leaves if not isinstance(x, quantize.Int8Weight))
    for m in matrices:  # one float32 scale per output channel: shared by a whole input axis
        assert m.scale.dtype == jnp.float32 and m.scale.size * 16 <= m.values.size
    total = sum(x.size for x in jax.tree.leaves(params))
    assert sum(m.values.size for m in matrices) > 0.9 * total  # nearly every weight is in a matrix
    back = quantize.dequantize(q, "float32")
    for w, d, m in zip(jax.tree.leaves(params), jax.tree.leaves(back), leaves, strict=True):
        step = m.scale if isinstance(m, quantize.Int8Weight) else 0.0
        assert np.all(np.abs(np.asarray(w) - np.asarray(d)) <= np.asarray(step) / 2 + 1e-7)


@pytest.mark.parametrize("fmt, max_error", [("int8", 0.05), ("bfloat16", 0.01)])
def test_a_trained_model_predicts_nearly_the_same_from_converted_weights(tiny_run, fmt, max_error):
    c, params, tok = _trained(tiny_run[0])
    ids = np.asarray([tok.encode("ROMEO: What say you, my lord? Speak, and be brief.")[: c.max_len]])
    apply = jax.jit(lambda p: TransformerLM(c).apply({"params": quantize.dequantize(p, c.dtype)}, ids,
                                                      np.arange(ids.shape[1])[None], np.ones_like(ids)))
    want, got = np.asarray(apply(params)), np.asarray(apply(quantize.convert(params, fmt)))
    error = np.linalg.norm(got - want) / np.linalg.norm(want)
    agree = (got.argmax(-1) == want.argmax(-1)).mean()
    print(f"{fmt}: logits relative error {error:.2e}, next-token argmax agreement {agree:.0%}")
    assert error < max_error and agree >= 0.9
