"""Evaluation (lm/evaluate.py): bits per byte on a text counted by hand, and `python -m lm.evaluate` on a trained
run against the loss and bytes recomputed here from the model's logits and the decoded text."""

import json
import math

import flax.linen as nn
import jax
import numpy as np
import pytest
from conftest import char_tokenizer, run_module, score_by_hand

from lm.backends import select
from lm.data import corpus
from lm.data.batches import eval_batches
from lm.data.config import DataConfig
from lm.evaluate.scoring import evaluate, make_eval_step
from lm.model.config import ModelConfig
from lm.parallel import mesh as shd
from lm.parallel import placement


def test_bits_per_byte_of_a_text_counted_by_hand(tmp_path, cache_dir):
    """Two documents, 'héllo' and 'ab', scored by a model whose parameters are all zero (its logits are zero: every
    token costs ln V). Targets: h é l l o EOS and a b EOS, 9 of them; bytes: 1+2+1+1+1 and 1+1, with each EOS
    standing for the separator '\\n\\n' (2 bytes): 12. Pieces: h é l o a b, '\\n', <unk> <s> </s>: V = 10."""
    rows = tmp_path / "docs.jsonl"
    rows.write_text("".join(json.dumps({"text": t}) + "\n" for t in ("héllo", "ab", "zz")))  # 'zz': validation
    d = {"path": str(rows), "validation_fraction": 1 / 3}
    tok = char_tokenizer(cache_dir, **d)
    assert tok.vocab_size == 10
    c = ModelConfig(vocab_size=tok.vocab_size, max_len=15, num_layers=1, num_heads=2, embed_dim=8, mlp_dim=16)
    model = select.model(c)
    zeros = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype),
                         jax.eval_shape(lambda: nn.unbox(placement.boxed_params(model, 0))))
    layout = shd.tensor_layout(1)
    data = DataConfig(cache_dir=cache_dir, **d)
    batches = list(eval_batches(corpus.eval_splits(data, tok, c.max_len + 1, "train"), 1))
    assert len(batches) == 1  # 11 tokens in one row of 16
    result = evaluate(make_eval_step(model, tok.token_bytes(len("\n\n")), layout), zeros, batches, layout)
    assert result["tokens"] == 9
    assert result["loss"] == pytest.approx(math.log(10), rel=1e-6)
    assert result["bits_per_byte"] == pytest.approx(9 * math.log2(10) / 12, rel=1e-6)


def test_evaluate_reports_the_loss_and_bytes_recomputed_from_the_logits(tiny_run, cache_dir):
    workdir, _ = tiny_run
    result = run_module("lm.evaluate", "--workdir", workdir, "--cache_dir", cache_dir)
    assert result.returncode == 0, result.stderr
    metrics = json.loads(result.stdout.strip().splitlines()[-1])
    nll, count, nbytes = score_by_hand(workdir)
    print(f"lm.evaluate {metrics}; here: {count} targets, {nbytes} bytes, loss {nll / count:.6f}")
    assert metrics["step"] == 20 and metrics["tokens"] == count
    assert metrics["loss"] == pytest.approx(nll / count, rel=1e-5)
    assert metrics["perplexity"] == pytest.approx(math.exp(nll / count), rel=1e-5)
    assert metrics["bits_per_byte"] == pytest.approx(nll / math.log(2) / nbytes, rel=1e-5)
