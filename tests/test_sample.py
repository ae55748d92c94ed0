"""Sampling: filters checked against a fake logits function, determinism, and greedy decoding of a trained model."""

import dataclasses
import functools
import json
import math
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ROOT, char_tokenizer, run_module, wide_params

from lm.backends import select
from lm.checkpoint import reader
from lm.model.config import ModelConfig
from lm.model.transformer import init_cache
from lm.parallel import mesh as shd
from lm.parallel import placement
from lm.parallel.placement import boxed_params
from lm.sample.generate import cache_slots, decode, generate, model_apply, until_stop

V = 20


def fake_apply(params, tokens, positions, segment_ids, cache):
    """The same logits (`params`, [V]) at every position, whatever the input."""
    logits = jnp.broadcast_to(params, tokens.shape + (V,))
    return logits, {**cache, "index": cache["index"] + tokens.shape[1]}


def _fake_generate(logits, steps=50, batch=16, seed=0, **kw):
    cache = {"index": jnp.zeros((), jnp.int32), "segment_ids": jnp.zeros((batch, 8), jnp.int32)}
    prompt = jnp.zeros((batch, 3), jnp.int32)
    out, _ = decode(fake_apply, jnp.asarray(logits, jnp.float32), cache, prompt, jax.random.key(seed), steps,
                    context=4, **kw)  # the context refilled many times
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


def _varied_model(family):
    """A small model whose greedy continuations vary (see conftest.wide_params), GPT-2 or Llama style."""
    cfg = ModelConfig(vocab_size=40, max_len=32, num_layers=2, num_heads=4, embed_dim=32, mlp_dim=64)
    if family == "llama":  # RoPE, RMSNorm, SwiGLU, grouped-query attention, untied head, unrolled layers
        cfg = dataclasses.replace(cfg, num_kv_heads=2, position="rope", norm="rmsnorm", mlp="swiglu",
                                  use_bias=False, tie_embeddings=False, scan_layers=False)
    return cfg, wide_params(cfg, {"gpt2": 2, "llama": 0}[family])


def _greedy_by_full_forward_passes(forward, prompt, steps, context):
    """Greedy tokens after `prompt`, each the argmax of a forward pass over the row's context recomputed from
    scratch: all its tokens, until one more would pass `context`; then its newest context // 2."""
    tokens, start = list(prompt), 0
    for _ in range(steps):
        if len(tokens) - start > context:
            start = len(tokens) - context // 2
        n = len(tokens) - start  # the context, then padding (segment 0) that no earlier slot attends to
        ctx, segments = np.zeros((1, context), np.int32), (np.arange(context) < n)[None].astype(np.int32)
        ctx[0, :n] = tokens[start:]
        tokens.append(int(np.argmax(forward(ctx, np.arange(context)[None], segments)[0, n - 1])))
    return tokens[len(prompt):]


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_greedy_decoding_matches_full_forward_passes_past_the_context_and_left_padded(family):
    """Cached greedy decoding of prompts of 1 to 25 tokens, left-padded in one batch (and one alone), 90 tokens
    past a context of 32 (so each row's context is cut and prefilled again several times, at steps of its own):
    every token is the one full forward passes give."""
    cfg, params = _varied_model(family)
    forward = jax.jit(functools.partial(select.model(cfg).apply, {"params": params}))
    prompts = [[1, 5, 7], [2, 9, 4, 4, 8, 1, 3, 11, 20, 30, 31, 32], [6], list(range(3, 28))]
    steps, width = 90, max(len(p) for p in prompts)
    want = [_greedy_by_full_forward_passes(forward, p, steps, cfg.max_len) for p in prompts]
    assert all(len(set(row)) >= 8 for row in want), want  # continuations that vary
    batch = np.zeros((len(prompts), width), np.int32)
    for i, p in enumerate(prompts):
        batch[i, width - len(p):] = p
    apply = model_apply(select.model(cfg))

    def greedy(prompt, lens=None):
        cache = init_cache(cfg, len(prompt), cache_slots(prompt.shape[1], steps, cfg.max_len))
        out, _ = decode(apply, params, cache, jnp.asarray(prompt), jax.random.key(0), steps, 0.0, 0, 1.0, lens,
                        context=cfg.max_len)
        return np.asarray(out).tolist()

    together = greedy(batch, jnp.asarray([len(p) for p in prompts]))
    for i in range(len(prompts)):
        assert together[i] == want[i], i
    assert greedy(np.asarray([prompts[1]]))[0] == want[1]  # alone, unpadded


def test_rows_stop_at_eos_and_the_loop_ends_when_all_have():
    logits = np.zeros(V)
    logits[3] = 1.0  # token 3 is likely but not certain: rows stop at different steps
    cache = {"index": jnp.zeros((), jnp.int32), "segment_ids": jnp.zeros((16, 64), jnp.int32)}
    out, lengths = decode(fake_apply, jnp.asarray(logits, jnp.float32), cache, jnp.zeros((16, 3), jnp.int32),
                          jax.random.key(0), 40, 1.0, 0, 1.0, None, 3)
    out, lengths = np.asarray(out), np.asarray(lengths)
    for row, n in zip(out, lengths, strict=True):
        assert 3 not in row[:n] and (row[n:] == 3).all()
    assert len(set(lengths.tolist())) > 3 and lengths.max() < 40
    greedy, stopped = decode(fake_apply, jnp.asarray(logits, jnp.float32), cache, jnp.zeros((16, 3), jnp.int32),
                             jax.random.key(0), 40, 0.0, 0, 1.0, None, 3)
    assert (np.asarray(stopped) == 0).all() and (np.asarray(greedy) == 3).all()


def _tiny_model(max_len=32):
    cfg = ModelConfig(vocab_size=30, max_len=max_len, num_layers=2, num_heads=2, embed_dim=16, mlp_dim=32)
    return cfg, nn.unbox(boxed_params(select.model(cfg), 1))


class _Chars:
    """Characters a..z, BOS 26, EOS 27 (other ids print as ?), for the library entry point."""

    bos_id, eos_id = 26, 27

    def encode(self, text):
        return [ord(c) - 97 for c in text]

    def decode(self, ids):
        return "".join(chr(i + 97) if i < 26 else "?" for i in ids)


def test_generate_compiles_once_per_bucket_and_reports_each_sample():
    cfg, params = _tiny_model()
    results = generate(params, cfg, _Chars(), ["abc", "hello"], max_new_tokens=20, temperature=1.0, num_samples=4)
    compiled = decode._cache_size()
    assert len(results) == 8 and [r["prompt"] for r in results] == ["abc"] * 4 + ["hello"] * 4
    for r in results:
        assert r["stop_reason"] in ("eos", "length") and len(r["sample"]) == r["tokens"] <= 20
    again = generate(params, cfg, _Chars(), ["xy", "abcdefgh"], max_new_tokens=20, temperature=0.5, top_k=5,
                     num_samples=4, seed=3)  # other lengths in the same bucket (16), other settings
    assert decode._cache_size() == compiled and len(again) == 8
    free = generate(params, cfg, _Chars(), ["abc"], max_new_tokens=20, temperature=0.0)[0]
    assert len(free["sample"]) >= 3, free
    stop = free["sample"][1:3]
    cut = generate(params, cfg, _Chars(), ["abc"], max_new_tokens=20, temperature=0.0, stop=["zzzz", stop])[0]
    k = free["sample"].index(stop)
    assert cut == {"prompt": "abc", "sample": free["sample"][:k], "tokens": k + 2, "stop_reason": "stop"}


def test_tensor_parallel_sampling_gives_the_tokens_of_one_device():
    """Parameters split over 4 devices by the tensor axis (heads, MLP, vocabulary) sample what one device does."""
    cfg = ModelConfig(vocab_size=30, max_len=32, num_layers=2, num_heads=4, num_kv_heads=4, embed_dim=32, mlp_dim=64,
                      vocab_multiple=8)
    params = nn.unbox(boxed_params(select.model(cfg), 1))
    layout = shd.tensor_layout(4)
    target = placement.abstract_params(select.model(cfg), layout)
    split = jax.device_put(params, jax.tree.map(lambda a: a.sharding, target))
    kernel = split["blocks"]["mlp"]["fc"]["kernel"]
    assert len(kernel.sharding.device_set) == 4 and kernel.addressable_shards[0].data.shape[-1] == 64 // 4
    kw = dict(max_new_tokens=24, num_samples=2, temperature=0.9, top_k=8, seed=5)
    alone = generate(params, cfg, _Chars(), ["abc", "hello"], **kw)
    with layout.scope():
        sharded = generate(split, cfg, _Chars(), ["abc", "hello"], **kw)
    assert sharded == alone and len({r["sample"] for r in alone}) > 1


def test_the_sample_command_samples_with_the_settings_its_flags_give(wide_run):
    """`lm.sample` with --temperature, --top_k, --top_p, --seed and --max_new_tokens away from their defaults
    writes the samples generate() draws here with those settings from the latest checkpoint; each setting changed
    alone draws others. (The shapes of test_cli's sampling tests: their compiled programs serve here.)"""
    settings = dict(max_new_tokens=40, temperature=0.7, top_k=5, top_p=0.9, seed=11)
    done = run_module("lm.sample", "--workdir", wide_run, "--prompt", "ROMEO:", "--prompt", "KING:", "--format",
                      "jsonl", *(f"--{k}={v}" for k, v in settings.items()))
    assert done.returncode == 0, done.stderr
    ckpt, step, c, tok, _ = reader.open_run(wide_run)
    assert step == 2
    layout = shd.tensor_layout(1)
    params = ckpt.params(step, placement.abstract_params(select.model(c), layout))

    def drawn(**changes):
        return generate(params, c, tok, ["ROMEO:", "KING:"], **{**settings, **changes})

    want = drawn()
    assert [json.loads(line) for line in done.stdout.strip().splitlines()] == want
    assert [r["prompt"] for r in want] == ["ROMEO:", "KING:"]
    assert all(r["tokens"] == 40 and r["stop_reason"] == "length" for r in want)  # no EOS in 40 tokens here
    for change in ({"seed": 12}, {"temperature": 0.8}, {"top_k": 50}, {"top_p": 1.0}):  # the defaults (seed: +1)
        assert drawn(**change) != want, change


def test_a_stop_string_far_into_a_long_sample_is_found_in_a_few_decodes(cache_dir):
    """The cut at a stop string 62,000 tokens into a 100,000-token sample: the text before its first occurrence
    and the tokens up to its end, found in about log2(100,000) decodes (one per token made it quadratic)."""
    tok = char_tokenizer(cache_dir)  # one token per character
    text = open(os.path.join(ROOT, "lm", "data", "tinyshakespeare.txt")).read()[:100_000]
    at = next(i for i in range(62_000, 100_000) if text.find(text[i:i + 12]) == i)
    stop = text[at:at + 12]
    calls = []

    class Counted:
        def decode(self, ids):
            calls.append(len(ids))
            return tok.decode(ids)

    cut = until_stop(Counted(), tok.encode(text), ["no such text", stop])
    assert cut == (text[:at], at + 12)
    assert len(calls) <= 2 + math.ceil(math.log2(100_000)), len(calls)
