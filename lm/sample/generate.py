"""Text from a model's parameters, with a KV cache: `generate` (the library entry point of `lm.sample`).

`generate` batches every prompt and sample: prompts are
left-padded to a bucket length (padding is a segment never attended), prefilled in one call, then decoded one
token per step inside one jitted loop that ends when every row has met the end-of-text id; stop strings cut
the text afterwards. Samples can be longer than the context: when a sample's context would pass the model's,
it is cut to its newest half and prefilled again, so a greedy sample does not depend on its batch-mates.
Temperature 0 is greedy; the same seed gives the same text.
"""

import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lm.backends import select
from lm.errors import UserError
from lm.model.config import ModelConfig
from lm.model.transformer import Cache, TransformerLM, init_cache
from lm.sample import weights
from lm.tokenizer.kinds import AnyTokenizer

# (params, tokens [B, T], positions [B, T], segment_ids [B, T], cache) -> (logits [B, T, V], cache)
ApplyFn = Callable[[Any, jax.Array, jax.Array, jax.Array, Cache], tuple[jax.Array, Cache]]


class Decoding(NamedTuple):
    """What the decode loop carries from one token to the next."""

    i: jax.Array | int  # tokens sampled so far
    buf: jax.Array  # [B, context + P + max_new_tokens]: every token, after `context` empty slots
    last: jax.Array  # [B, V]: the logits of each row's newest token
    cache: Cache
    done: jax.Array  # [B]: rows that met the end-of-text id
    lengths: jax.Array  # [B]: each row's tokens before it
    start: jax.Array  # [B]: buffer index of each row's first token of context


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
    """One token per row of logits [B, V]: argmax if temperature is 0 (no sorting then), else a draw from the
    filtered softmax."""
    def draw() -> jax.Array:
        return jax.random.categorical(key, filter_logits(logits, temperature, top_k, top_p), axis=-1).astype(jnp.int32)

    return jax.lax.cond(temperature > 0, draw, lambda: jnp.argmax(logits, axis=-1).astype(jnp.int32))


@functools.partial(jax.jit, static_argnames=("apply_fn", "max_new_tokens", "context"))
def decode(
    apply_fn: ApplyFn, params: Any, cache: Cache, prompt: jax.Array, key: jax.Array, max_new_tokens: int,
    temperature: float | jax.Array = 1.0, top_k: int | jax.Array = 0, top_p: float | jax.Array = 1.0,
    prompt_lens: jax.Array | None = None, eos_id: int | jax.Array = -1, context: int | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Continues prompt [B, P] (each row left-padded to P: its last `prompt_lens` [B] slots are the prompt;
    P <= `context`); returns tokens [B, max_new_tokens] and how many come before `eos_id` [B].

    A row's context is its own tokens, at most `context` of them (default: the cache's slots): a token that
    would make it longer cuts it to its newest `context // 2` tokens, and then every row's context is prefilled
    again into the cache (as also when the cache is full). So a row gives the tokens it would give alone,
    whatever its batch-mates and its padding. The cache needs room for the whole sample, or more slots than
    `context`. A row stops at `eos_id` (its later tokens are `eos_id`); the loop ends when every row has
    stopped. One compilation serves every prompt padded to the same P.
    """
    b, p = prompt.shape
    slots = cache["segment_ids"].shape[1]
    context = context or slots
    if p > context or (p + max_new_tokens > slots and slots <= context):
        raise ValueError(f"a cache of {slots} slots holds neither the {p} + {max_new_tokens} tokens nor a context "
                         f"of {context} and room to decode; give it more than {context} slots")
    keep = max(context // 2, 1)
    lens = jnp.full((b,), p, jnp.int32) if prompt_lens is None else prompt_lens.astype(jnp.int32)
    pad = p - lens  # [B] slots before each prompt
    arange = jnp.arange(p)[None, :]
    segments = (arange >= pad[:, None]).astype(jnp.int32)  # padding is segment 0: never attended
    empty = jax.tree.map(jnp.zeros_like, cache)
    logits, cache = apply_fn(params, prompt, jnp.maximum(arange - pad[:, None], 0), segments, cache)
    # Every token in one buffer, after `context` empty slots (so that a refill's window always fits in it):
    # the prompt at [context, context + P), token i at context + P + i.
    buf = jnp.zeros((b, context + p + max_new_tokens), jnp.int32).at[:, context:context + p].set(prompt)
    start = context + pad  # [B] buffer index of each row's first token of context
    done = jnp.zeros((b,), bool)
    carry = Decoding(0, buf, logits[:, -1], cache, done, jnp.zeros((b,), jnp.int32), start)

    def advance(c: Decoding, feed: Callable) -> Decoding:
        """Samples token i from the last logits, records it, and `feed`s it to the model (extend or refill)."""
        token = sample_token(c.last, jax.random.fold_in(key, c.i), temperature, top_k, top_p)  # [B]
        token = jnp.where(c.done, eos_id, token)
        end = context + p + c.i  # the token's buffer index
        buf = c.buf.at[:, end].set(token)
        lengths = jnp.where(c.done | (token == eos_id), c.lengths, c.i + 1)
        last, cache, start = feed(token, end, buf, c.cache, c.start)
        return Decoding(c.i + 1, buf, last, cache, c.done | (token == eos_id), lengths, start)

    def extend(token, end, buf, cache, start):
        out, cache = apply_fn(params, token[:, None], (end - start)[:, None], jnp.ones((b, 1), jnp.int32), cache)
        return out[:, -1], cache, start

    width = min(context, slots)  # of a refill: the longest context (a cache of fewer slots is never refilled)

    def refill(token, end, buf, cache, start):
        start = jnp.where(end + 1 - start > context, end + 1 - keep, start)  # contexts that grew too long: cut
        first = end + 1 - width  # buffer index of the window's first slot
        window = jax.lax.dynamic_slice_in_dim(buf, first, width, axis=1)  # [B, width], each row left-padded
        slot = first + jnp.arange(width)[None, :]
        segs = (slot >= start[:, None]).astype(jnp.int32)
        out, cache = apply_fn(params, window, jnp.maximum(slot - start[:, None], 0), segs, empty)
        return out[:, -1], cache, start

    def running(c: Decoding) -> jax.Array:
        return (c.i < max_new_tokens) & ~jnp.all(c.done)

    def needs_refill(c: Decoding) -> jax.Array:
        """The cache is full, or the next token makes some row's context longer than `context`."""
        return (c.cache["index"] >= slots) | jnp.any(context + p + c.i + 1 - c.start > context)

    def chunk(carry: Decoding) -> Decoding:
        """A refill if one is needed, then one token per step until the next is (or all rows stop): the inner
        loop has no branch, so its cache is updated in place."""
        carry = jax.lax.cond(needs_refill(carry), lambda c: advance(c, refill), lambda c: c, carry)
        return jax.lax.while_loop(lambda c: running(c) & ~needs_refill(c), lambda c: advance(c, extend), carry)

    out = jax.lax.while_loop(running, chunk, carry)
    kept = jnp.arange(max_new_tokens)[None, :] < out.lengths[:, None]  # a row that never stopped keeps all
    return jnp.where(kept, out.buf[:, context + p:], eos_id), out.lengths


def model_for(config: ModelConfig, params: Any) -> TransformerLM:
    """The model that samples from `params`: the backend's Ops for float weights, int8 ones for int8 weights."""
    return TransformerLM(config, weights.ops_for(params, select.select(config)))


@functools.cache
def model_apply(model: TransformerLM) -> ApplyFn:
    """The model's cached forward pass in the form `decode` takes (one per model, so jit caches on it)."""

    def apply(params: Any, tokens: jax.Array, positions: jax.Array, segment_ids: jax.Array, cache: Cache):
        return model.apply({"params": params}, tokens, positions, segment_ids, cache)

    return apply


def bucket(length: int, limit: int) -> int:
    """The padded prompt length for `length` tokens: a power of two from 16, at most `limit`."""
    return min(max(16, 1 << (length - 1).bit_length()), limit)


def cache_slots(width: int, new_tokens: int, context: int) -> int:
    """Cache slots for prompts padded to `width` and `new_tokens` more: no more than the sample needs, in a
    bucket; past the context, the context and room for half a context between refills."""
    if width + new_tokens <= context:
        return bucket(width + new_tokens, context)
    return context + max(context // 2, 1)


def until_stop(tokenizer: AnyTokenizer, ids: list[int], stop: Sequence[str]) -> tuple[str, int] | None:
    """The text and token count up to the first stop string, if the text of `ids` holds one. The shortest prefix
    of tokens whose text holds a stop string is found by bisection: a few decodes, not one per token."""
    def hit(k: int) -> bool:
        text = tokenizer.decode(ids[:k])
        return any(s in text for s in stop)

    if not hit(len(ids)):
        return None
    low, high = 0, len(ids)  # hit(high) holds; hit(low) does not (no text holds nothing)
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if hit(mid) else (mid, high)
    prefix = tokenizer.decode(ids[:high])
    return prefix[: min(prefix.index(s) for s in stop if s in prefix)], high


def generate(params: Any, model_config: ModelConfig, tokenizer: AnyTokenizer, prompts: Sequence[str], *,
             max_new_tokens: int = 200, temperature: float = 0.8, top_k: int = 50, top_p: float = 1.0,
             num_samples: int = 1, seed: int = 0, stop: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Samples `num_samples` continuations of each prompt in one batch: a list (prompt-major) of
    {'prompt', 'sample', 'tokens', 'stop_reason'}, stop_reason being 'eos', 'stop' (a stop string) or 'length'."""
    if num_samples < 1 or max_new_tokens < 1 or temperature < 0 or top_k < 0 or not 0 < top_p <= 1:
        raise UserError("need num_samples >= 1, max_new_tokens >= 1, temperature >= 0, top_k >= 0 and "
                            f"0 < top_p <= 1; got {num_samples}, {max_new_tokens}, {temperature}, {top_k}, {top_p}")
    encoded = [[tokenizer.bos_id, *tokenizer.encode(p)] for p in prompts]
    for i, ids in enumerate(encoded):
        if len(ids) > model_config.max_len:
            raise UserError(f"prompt {i + 1} is {len(ids)} tokens (with BOS) but the model's context is "
                                f"{model_config.max_len}; shorten the prompt")
    rows = [ids for ids in encoded for _ in range(num_samples)]
    width = bucket(max(len(r) for r in rows), model_config.max_len)
    prompt = np.zeros((len(rows), width), np.int32)
    for i, r in enumerate(rows):
        prompt[i, width - len(r):] = r
    lens = np.asarray([len(r) for r in rows], np.int32)
    context = model_config.max_len
    tokens, lengths = decode(model_apply(model_for(model_config, params)), params,
                             init_cache(model_config, len(rows), cache_slots(width, max_new_tokens, context)),
                             jnp.asarray(prompt), jax.random.key(seed), max_new_tokens, temperature, top_k, top_p,
                             jnp.asarray(lens), tokenizer.eos_id, context)
    out = []
    for i, (row, n) in enumerate(zip(np.asarray(tokens).tolist(), np.asarray(lengths).tolist(), strict=True)):
        ids = row[:n]
        reason = "eos" if n < max_new_tokens else "length"
        cut = until_stop(tokenizer, ids, stop) if stop else None
        text, n = (cut[0], cut[1]) if cut else (tokenizer.decode(ids), n)
        out.append({"prompt": prompts[i // num_samples], "sample": text, "tokens": n,
                    "stop_reason": "stop" if cut else reason})
    return out
